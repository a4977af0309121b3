"""Property-based fuzzing of everything a client can send.

In process: the frame parser either returns a command or raises a documented
ProtocolError, for any bytes. Over the wire, against one real server: random frames,
query strings and bodies always get a valid reply or a documented error, the connection
stays open, and a normal client still chats afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_chat import wire
from twisted_chat.errors import CODES

from .server import ChatServerProcess, login, poll, post_message, recv_json, ws_connect

# The codes docs/protocol.md lists; the server may use no other.
ERROR_CODES = {
    "bad_request",
    "session_ended",
    "unknown_room",
    "not_authenticated",
    "too_large",
    "unsupported_media_type",
    "too_many_rooms",
    "too_many_connections",
    "rate_limited",
    "internal_error",
    "unavailable",
    "csrf_failed",
    "method_not_allowed",
    "request_timeout",
    "upgrade_required",
    "not_allowed",
    "banned",
    "disconnected",
    "no_such_message",
    "room_closed",
}


def test_every_error_code_the_server_has_is_documented():
    assert set(CODES) == ERROR_CODES


SERVER_FRAME_TYPES = {"message", "subscribed", "unsubscribed", "ack", "error", "deleted"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=2**53 - 2, max_value=2**64),
    st.text(max_size=50),
)
frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["send", "subscribe", "unsubscribe", "SEND", "", "x"])},
        optional={key: field_values for key in ("room", "since", "text", "nonce")},
    ),
    json_values,
)


def check_error(code: str) -> None:
    assert code in ERROR_CODES, f"undocumented error code {code!r}"


# --- in process -------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=200), frames.map(lambda f: json.dumps(f).encode())))
def test_frame_parser_returns_a_command_or_a_documented_error(payload):
    try:
        command = wire.parse_client_frame(payload, 4000)
    except wire.ProtocolError as error:
        check_error(error.code)
        assert error.as_ws_frame()["type"] == "error"
        return
    assert isinstance(command, wire.Subscribe | wire.Unsubscribe | wire.Send)
    assert command.room >= 1
    if isinstance(command, wire.Send):
        assert 0 < len(command.text) <= 4000 and command.text == command.text.strip()


# --- over the wire ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(database_template: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(database_template, folder / "db.sqlite3")
    server = ChatServerProcess(
        f"sqlite:///{folder / 'db.sqlite3'}",
        folder / "server.log",
        # Every example ends with a probe command: no command rate limit here.
        {"CHAT_SEND_RATE": "0", "CHAT_COMMAND_RATE": "0", "CHAT_POLL_MAX_TIMEOUT": "0.05"},
    )
    server.start()
    yield server
    assert server.process is not None and server.process.poll() is None, "the server died while fuzzed"
    server.stop()


@pytest.fixture(scope="module")
def alice(fuzz_server):
    return login(fuzz_server, "alice")


def check_server_frame(frame: dict) -> None:
    assert frame["type"] in SERVER_FRAME_TYPES, frame
    if frame["type"] == "error":
        check_error(frame["code"])
        assert isinstance(frame["message"], str)


PROBE = json.dumps({"type": "unsubscribe", "room": 987654})


def exchange(ws, payload: str | bytes) -> None:
    """Send one fuzzed frame, then a probe whose reply marks the end of the answers."""
    ws.send(payload)
    ws.send(PROBE)
    while True:
        frame = recv_json(ws, 10)
        check_server_frame(frame)
        if frame == {"type": "unsubscribed", "room": 987654}:
            return


fuzz_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.slow
def test_websocket_survives_random_frames(fuzz_server, alice):
    with ws_connect(fuzz_server, alice) as ws:

        @fuzz_settings
        @given(st.one_of(frames.map(json.dumps), st.text(max_size=100), st.binary(max_size=100)))
        def one_frame(payload):
            exchange(ws, payload)

        one_frame()
        ws.send(json.dumps({"type": "send", "room": 1, "text": "after the fuzz", "nonce": "after-fuzz"}))
        while (frame := recv_json(ws))["type"] != "ack" or frame.get("nonce") != "after-fuzz":
            check_server_frame(frame)


@pytest.mark.slow
def test_long_poll_queries_get_valid_answers(fuzz_server):
    names = st.sampled_from(["room", "since", "lastupdate", "timeout", "callback", "x"]) | st.text(max_size=5)
    values = st.text(max_size=12) | st.integers(-3, 10**20).map(str) | st.just("1")

    @fuzz_settings
    @given(st.dictionaries(names, values, max_size=5))
    def one_query(params):
        response = requests.get(fuzz_server.url + "/poll", params=params, timeout=10)
        body = response.json()
        if response.status_code == 200:
            assert set(body) == {"room", "last", "messages", "presence"}
        else:
            assert response.status_code in (400, 403, 404), response.status_code
            check_error(body["error"]["code"])
        assert response.headers["Cache-Control"] == "no-store"

    one_query()


@pytest.mark.slow
def test_long_poll_bodies_get_valid_answers(fuzz_server, alice):
    content_types = st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data", ""]
    )
    bodies = st.one_of(frames.map(lambda f: json.dumps(f).encode()), st.binary(max_size=200))

    @fuzz_settings
    @given(content_types, bodies)
    def one_post(content_type, body):
        response = alice.post(
            fuzz_server.url + "/poll",
            data=body,
            headers={"Content-Type": content_type, "X-CSRFToken": alice.cookies["csrftoken"]},
            timeout=10,
        )
        answer = response.json()
        if response.status_code == 200:
            assert set(answer) == {"room", "id"}
        else:
            assert response.status_code in (400, 403, 404, 413, 415), response.status_code
            check_error(answer["error"]["code"])

    one_post()
    assert post_message(alice, fuzz_server, 1, "still chatting").status_code == 200
    assert poll(fuzz_server, 1).json()["messages"][-1]["text"] == "still chatting"
