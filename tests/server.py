"""A real chat server in a subprocess (``twistd -n -y chatserver.tac``) for end-to-end tests."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
_BESIDE_PYTHON = Path(sys.executable).with_name("twistd")
TWISTD = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else shutil.which("twistd")
PASSWORD = "correct-horse-battery-staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll a condition until it holds, or fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def base_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_DEBUG="1", DATABASE_URL=database_url, CHAT_REDIS_URL="", PYTHONUNBUFFERED="1")
    return env


class ChatServerProcess:
    """One twistd process on a free port, with its own SQLite database file."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
    ):
        self.database_url = database_url
        self.nofile = nofile
        self.log_path = log_path
        self.extra_env = env or {}
        self.port = free_port()
        self.ops_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        """The operators' port: /metrics, and /healthz with connection counts."""
        return f"http://127.0.0.1:{self.ops_port}"

    def stats(self) -> dict[str, Any]:
        return requests.get(self.ops_url + "/healthz", timeout=5).json()

    def metrics(self) -> str:
        return requests.get(self.ops_url + "/metrics", timeout=5).text

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 90.0) -> ChatServerProcess:
        """Returns once /healthz answers. The bound is generous: a server that exits fails
        at once, and a loaded 2-core machine has taken over 30 s to start one."""
        env = base_env(self.database_url)
        env.update(
            CHAT_PORT=str(self.port),
            CHAT_INTERFACE="127.0.0.1",
            CHAT_OPS_PORT=str(self.ops_port),
            **self.extra_env,
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "-y", "chatserver.tac"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limit_descriptors if self.nofile else None,
            )
        wait_for(self._healthy, timeout, 0.05, f"the server on port {self.port} to answer /healthz")
        return self

    def _limit_descriptors(self) -> None:
        """In the child: start with this (soft, hard) limit on open files."""
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return requests.get(self.ops_url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(
                f"the server did not exit within {timeout}s of {sig}:\n{self.log_tail()}"
            ) from None
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> ChatServerProcess:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class _SourceAddressAdapter(HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    """An HTTP client whose connections come from ``address`` (e.g. 127.0.0.2: another
    client address on loopback)."""
    session = requests.Session()
    session.mount("http://", _SourceAddressAdapter(address))
    return session


def login(
    server: ChatServerProcess, username: str, password: str = PASSWORD, address: str = "127.0.0.1"
) -> requests.Session:
    """Log in through Django's own login form, as a browser would."""
    session = session_from(address)
    page = session.get(server.url + "/accounts/login/", timeout=10)
    page.raise_for_status()
    response = session.post(
        server.url + "/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": server.url + "/accounts/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, f"login as {username} failed: {response.status_code}"
    assert "sessionid" in session.cookies
    return session


def logout(session: requests.Session, server: ChatServerProcess) -> None:
    """Log out through Django's own form, as a browser would."""
    response = session.post(
        server.url + "/accounts/logout/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": server.url + "/chats/"},
        timeout=10,
    )
    assert response.status_code in (200, 302)


def cookie_header(session: requests.Session | None) -> str:
    if session is None:
        return ""
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def ws_connect(
    server: ChatServerProcess,
    session: requests.Session | None = None,
    query: str = "",
    origin: str | None = None,
    address: str = "127.0.0.1",
) -> ClientConnection:
    headers = {"Origin": origin or server.url}
    if session is not None:
        headers["Cookie"] = cookie_header(session)
    url = server.ws_url + (f"?{query}" if query else "")
    return connect(
        url, additional_headers=headers, open_timeout=10, max_size=2**22, source_address=(address, 0)
    )


# Who is here and who is typing: frames that come and go with other clients, which most
# tests leave out.
EPHEMERAL = ("presence", "typing")


def recv_json(ws: ClientConnection, timeout: float = 10.0, everything: bool = False) -> dict[str, Any]:
    """The next frame, skipping presence and typing unless ``everything``."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
        if everything or frame.get("type") not in EPHEMERAL:
            return frame


def recv_until(
    ws: ClientConnection,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    everything: bool = False,
) -> list[dict[str, Any]]:
    """Frames up to and including the first that matches; fails at the deadline."""
    deadline = time.monotonic() + timeout
    frames = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {timeout}s; got {frames[-5:]}")
        try:
            frame = recv_json(ws, remaining, everything)
        except TimeoutError:
            raise AssertionError(f"no matching frame within {timeout}s; got {frames[-5:]}") from None
        frames.append(frame)
        if predicate(frame):
            return frames


def post_message(
    session: requests.Session, server: ChatServerProcess, room: int, text: str, nonce: str | None = None
) -> requests.Response:
    body: dict[str, Any] = {"room": room, "text": text}
    if nonce is not None:
        body["nonce"] = nonce
    return post_command(session, server, **body)


def post_command(session: requests.Session, server: ChatServerProcess, **fields: Any) -> requests.Response:
    """POST /poll with any command (send, edit, delete, typing), as the page sends it."""
    return session.post(
        server.url + "/poll",
        json=fields,
        headers={"X-CSRFToken": session.cookies.get("csrftoken", ""), "Referer": server.url + "/chats/"},
        timeout=30,
    )


def poll(
    server: ChatServerProcess,
    room: int,
    since: int | None = None,
    timeout: float = 0,
    session: requests.Session | None = None,
) -> requests.Response:
    params: dict[str, Any] = {"room": room, "timeout": timeout}
    if since is not None:
        params["since"] = since
    getter = session.get if session is not None else requests.get
    return getter(server.url + "/poll", params=params, timeout=timeout + 30)
