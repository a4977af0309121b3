"""Account and room forms, with errors a person can act on."""

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.validators import ASCIIUsernameValidator

from .models import ChatRoom


class LoginForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password don't match. Check them and try again.",
    }


class SignupForm(UserCreationForm):
    """Django's signup form, for ASCII names only.

    Names from other scripts can look exactly like an existing one (`alice` with a Cyrillic
    a, U+0430, beside `alice`). Names differing only in case (`Alice`) Django's form already refuses.
    """

    error_messages = {
        **UserCreationForm.error_messages,
        "password_mismatch": "The two passwords don't match. Type the same password in both boxes.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        username = self.fields["username"]
        username.validators.append(
            ASCIIUsernameValidator(
                message="Use only letters a-z, digits and the signs @ . + - _ (no spaces or accents)."
            )
        )
        username.help_text = "Up to 150 characters: letters a-z, digits and @ . + - _"


class RoomForm(forms.ModelForm):
    """A new room, as staff create it from the room list."""

    class Meta:
        model = ChatRoom
        fields = ["name", "description", "is_private"]
        labels = {"is_private": "Private (members only)"}
        help_texts = {"is_private": "Only members can see and read it; you become its first member."}
        error_messages = {
            "name": {"unique": "There is already a room with that name. Pick another one."},
        }
