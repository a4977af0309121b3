"""Account forms."""

from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.validators import ASCIIUsernameValidator


class SignupForm(UserCreationForm):
    """Django's signup form, for ASCII names only.

    Names from other scripts can look exactly like an existing one (`alice` with a Cyrillic
    a, U+0430, beside `alice`). Names differing only in case (`Alice`) Django's form already refuses.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        username = self.fields["username"]
        username.validators.append(ASCIIUsernameValidator())
        username.help_text = "Required. 150 characters or fewer. Letters a-z, digits and @/./+/-/_ only."
