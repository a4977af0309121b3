from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from chat import views as chat_views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat:room_list", permanent=False)),
    path("favicon.ico", chat_views.favicon),
    path("admin/", admin.site.urls),
    # Ours first: login and logout with their own forms and messages win over Django's.
    path("accounts/", include("chat.accounts_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("chats/", include("chat.urls")),
]
