from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.room_list, name="room_list"),
    path("<int:room_id>/", views.room, name="room"),
    path("long_poll/<int:room_id>/", views.long_poll_room, name="long_poll_room"),
]
