from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import dateformat, timezone

from .models import Ban, ChatRoom, Message, datetime_from_ms


def local_time(ms: int) -> str:
    """A time the chat stamped (ms since the epoch) as the site's local date and time."""
    return dateformat.format(timezone.localtime(datetime_from_ms(ms)), "j M Y, H:i:s T")


@admin.register(ChatRoom)
class ChatRoomAdmin(admin.ModelAdmin):
    list_display = ["name", "is_private", "is_closed", "last_message_id", "created_at"]
    list_filter = ["is_private", "is_closed"]
    search_fields = ["name"]
    filter_horizontal = ["members"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages as people saw them: admins read and delete them, never edit them.

    Edits and deletions are records in the room's log about another message, not messages;
    they are left out.
    """

    list_display = ["room", "seq", "username", "text", "sent", "last_edited"]
    list_filter = ["room"]
    search_fields = ["text", "username"]
    list_select_related = ["room"]
    fields = ["room", "seq", "kind", "user", "username", "text", "sent", "last_edited", "nonce"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return super().get_queryset(request).filter(kind__in=[Message.MESSAGE, Message.SYSTEM])

    @admin.display(description="sent", ordering="ts")
    def sent(self, message: Message) -> str:
        return local_time(message.ts)

    @admin.display(description="edited", ordering="edited")
    def last_edited(self, message: Message) -> str:
        return local_time(message.edited) if message.edited is not None else self.get_empty_value_display()

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Messages enter through the chat server, which assigns their ids.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False


@admin.register(Ban)
class BanAdmin(admin.ModelAdmin):
    list_display = ["user", "banned_from", "reason", "created_at"]
    search_fields = ["user__username", "room__name", "reason"]
    list_select_related = ["user", "room"]
    autocomplete_fields = ["user", "room"]

    @admin.display(description="room", ordering="room__name")
    def banned_from(self, ban: Ban) -> str:
        return ban.room.name if ban.room else "every room"
