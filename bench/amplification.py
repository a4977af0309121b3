"""What one anonymous socket can make the server hold: ``python -m bench.amplification``.

Starts our server (from ``--root``: this checkout by default, or another build's
worktree, to compare), fills the lobby with ``--messages`` messages of 4000 characters,
then does what docs/security.md's round two describes: opens a WebSocket that never
reads (4 KiB receive buffer) and sends ``--subscribes`` frames
``{"type":"subscribe","room":1,"since":0}``, ``--interval`` seconds apart (sent all at
once, each would cancel the one before it while its history is read), then reads what
it was sent. It reports how much that was, and the server's resident memory before and
at its peak. (Frames are built once per event and queued by reference, so what is
queued costs memory once the server joins its send buffer to write it: reading makes it.)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import time
from pathlib import Path

from websockets.sync.client import connect

from .run import ROOT, Server, running

ROOM = 1


def fill(server: Server, count: int) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    headers = {"Cookie": server.cookie, "Origin": f"http://127.0.0.1:{server.port}"}
    with connect(url, additional_headers=headers, open_timeout=10, max_size=2**24) as ws:
        for n in range(count):
            text = f"{n:04d}" + "x" * 3996
            ws.send(json.dumps({"type": "send", "room": ROOM, "text": text, "nonce": f"n{n}"}))
        while json.loads(ws.recv(timeout=60)).get("nonce") != f"n{count - 1}":
            pass


def masked_frame(text: str) -> bytes:
    """A client's text frame (payloads under 126 bytes)."""
    payload = text.encode()
    mask = os.urandom(4)
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def attack(port: int, subscribes: int, interval: float) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    sock.settimeout(5)
    frame = masked_frame(json.dumps({"type": "subscribe", "room": ROOM, "since": 0}))
    with contextlib.suppress(OSError):  # the server may stop reading, or drop the socket
        for _ in range(subscribes):
            sock.sendall(frame)
            time.sleep(interval)
    return sock


def drain(sock: socket.socket, server: Server, seconds: float) -> tuple[int, int]:
    """Then read what the server queued: its send buffer is joined into one string as the
    socket becomes writable again. Returns the bytes received and the server's peak RSS."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    received, peak = 0, server.rss()
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
        peak = max(peak, server.rss())
    return received, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--subscribes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--settle", type=float, default=10, help="seconds to read what was sent")
    args = parser.parse_args()
    with running("ours", args.root.resolve(), CHAT_MAX_CONNECTIONS_PER_IP="200") as server:
        fill(server, args.messages)
        time.sleep(1)
        before = server.rss()
        sock = attack(server.port, args.subscribes, args.interval)
        received, peak = drain(sock, server, args.settle)
        sock.close()
    print(
        f"{args.subscribes} subscribes with since=0 over {args.messages} messages of 4000 characters, "
        f"from a socket that does not read until it has sent them all: the server sent it "
        f"{received / 2**20:.1f} MB; server RSS {before / 2**20:.0f} MB before, "
        f"{peak / 2**20:.0f} MB at the peak (+{(peak - before) / 2**20:.0f} MB)"
    )


if __name__ == "__main__":
    main()
