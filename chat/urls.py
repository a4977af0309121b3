from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.room_list, name="room_list"),
    path("new/", views.create_room, name="create_room"),
    path("rooms.json", views.rooms_json, name="rooms_json"),
    path("<int:room_id>/", views.room, name="room"),
    path("<int:room_id>/history", views.history, name="history"),
    path("long_poll/<int:room_id>/", views.long_poll_room, name="long_poll_room"),
]
