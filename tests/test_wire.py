"""What the server makes of a client's text, whichever transport brought it."""

from __future__ import annotations

import pytest

from twisted_chat.errors import ProtocolError
from twisted_chat.wire import balance_bidi, clean_text, parse_client_frame

RLO, PDF, RLI, PDI, LRE = "\u202e", "\u202c", "\u2067", "\u2069", "\u202a"


@pytest.mark.parametrize(
    ("text", "balanced"),
    [
        ("plain", "plain"),
        (f"a{RLO}b", f"a{RLO}b{PDF}"),  # left open: closed at the end
        (f"a{PDF}b{PDI}c", "abc"),  # closers that close nothing: dropped
        (f"{RLI}x{LRE}y{PDI}z", f"{RLI}x{LRE}y{PDI}z"),  # a PDI closes the embedding inside it
        (f"{LRE}{RLI}x{PDF}", f"{LRE}{RLI}x{PDI}{PDF}"),  # a PDF cannot reach out of an isolate
    ],
)
def test_bidi_controls_are_balanced_within_a_text(text, balanced):
    assert balance_bidi(text) == balanced


def test_joiners_inside_visible_text_are_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_text(f"hi {family}\u200b", 100) == f"hi {family}\u200b"


@pytest.mark.parametrize(
    "text", ["\u200b\u200c\u200d", "\ufeff", "\u2060\u2061", RLO + PDF, "\u3164", "\u0301"]
)
def test_text_that_shows_nothing_is_refused(text):
    with pytest.raises(ProtocolError, match="nothing visible"):
        clean_text(text, 100)


def test_nesting_too_deep_for_the_parser_is_a_bad_request():
    with pytest.raises(ProtocolError) as error:
        parse_client_frame(b"[" * 100_000, 100)
    assert error.value.code == "bad_request"
