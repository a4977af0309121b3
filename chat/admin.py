from django.contrib import admin

from .models import ChatRoom, Message


@admin.register(ChatRoom)
class ChatRoomAdmin(admin.ModelAdmin):
    list_display = ["name", "is_private", "last_message_id", "created_at"]
    list_filter = ["is_private"]
    search_fields = ["name"]
    filter_horizontal = ["members"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["room", "seq", "username", "text", "ts"]
    list_filter = ["room"]
    search_fields = ["text", "username"]
    list_select_related = ["room"]
    readonly_fields = ["room", "seq", "user", "username", "text", "ts", "nonce"]

    def has_add_permission(self, request) -> bool:
        # Messages enter through the chat server, which assigns their ids.
        return False
