from django.db import migrations


def create_demo_room(apps, schema_editor):
    ChatRoom = apps.get_model("chat", "ChatRoom")
    ChatRoom.objects.get_or_create(name="Lobby", defaults={"description": "Say hello."})


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [migrations.RunPython(create_demo_room, migrations.RunPython.noop)]
