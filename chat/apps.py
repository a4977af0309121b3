from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from .throttle import forget_login_failures

        user_logged_in.connect(forget_login_failures, dispatch_uid="chat.forget_login_failures")
