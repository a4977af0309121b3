"""Behaviour under stress: slow consumers, dead peers, shutdown, abandoned polls, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import threading
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed

from .server import login, poll, recv_json, wait_for, ws_connect

pytestmark = pytest.mark.slow
LOBBY = 1


def health(server) -> dict:
    return server.stats()


def raw_websocket(server, query: str = "", receive_buffer: int | None = None) -> socket.socket:
    """A WebSocket that completes the handshake and then never reads or answers again."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def pipeline_sends(ws, count: int, text: str, prefix: str) -> list[int]:
    for i in range(count):
        ws.send(json.dumps({"type": "send", "room": LOBBY, "text": f"{text} {i}", "nonce": f"{prefix}{i}"}))
    acked = []
    while len(acked) < count:
        frame = recv_json(ws, 30)
        if frame["type"] == "ack":
            acked.append(frame["id"])
        assert frame["type"] != "error", frame
    return acked


def test_slow_consumer_is_dropped_others_unaffected_and_it_can_resume(server):
    """Default 1 MiB limit; 12 MB of traffic overflows the kernel's socket buffers too."""
    alice = login(server, "alice")
    slow = raw_websocket(server, f"room={LOBBY}&since=0", receive_buffer=4096)
    wait_for(lambda: health(server)["subscriptions"] == 1, what="the slow client to subscribe")
    count, filler = 12_000, "x" * 1000
    received: list[int] = []
    with ws_connect(server, query=f"room={LOBBY}&since=0") as reader:
        assert recv_json(reader)["type"] == "subscribed"

        def read_all() -> None:
            while len(received) < count:
                frame = recv_json(reader, 30)
                if frame["type"] == "message":
                    received.append(frame["id"])

        reading = threading.Thread(target=read_all)
        reading.start()
        with ws_connect(server, alice) as sender:
            acked = pipeline_sends(sender, count, filler, "s")
        reading.join(60)
    assert received == acked == list(range(1, count + 1)), "the fast reader was disturbed"
    metrics = server.metrics()
    assert 'chat_slow_consumer_disconnects_total{transport="websocket"} 1.0' in metrics
    wait_for(lambda: health(server)["websockets"] == 0, what="the slow consumer to be dropped")
    slow.close()
    # Reconnecting with `since` loses nothing.
    with ws_connect(server, query=f"room={LOBBY}&since=0") as resumed:
        assert recv_json(resumed)["last"] == count
        assert [recv_json(resumed)["id"] for _ in range(count)] == acked


def test_a_peer_that_stops_answering_pings_is_dropped(server_factory):
    """autobahn batches its ping timers into 1 s buckets: settings below 1 s misfire."""
    server = server_factory({"CHAT_WS_PING_INTERVAL": "2", "CHAT_WS_PING_TIMEOUT": "2"})
    alice = login(server, "alice")
    with ws_connect(server, alice) as healthy:  # answers pings from its own thread
        dead = raw_websocket(server)
        wait_for(lambda: health(server)["websockets"] == 2, what="both connections to open")
        wait_for(lambda: health(server)["websockets"] == 1, timeout=10, what="the silent peer to be dropped")
        healthy.send(json.dumps({"type": "send", "room": LOBBY, "text": "alive", "nonce": "alive"}))
        assert recv_json(healthy)["type"] == "ack"
        dead.close()


def test_sigterm_is_graceful_and_loses_nothing_acknowledged(server):
    alice = login(server, "alice")
    poll_result: list[requests.Response] = []
    poller = threading.Thread(
        target=lambda: poll_result.append(poll(server, LOBBY, since=10_000, timeout=50))
    )
    with ws_connect(server, alice) as ws:
        acked = pipeline_sends(ws, 300, "before", "b")
        poller.start()
        wait_for(lambda: health(server)["parked_polls"] == 1, what="the poll to park")
        for i in range(200):  # still being written when the signal lands
            ws.send(json.dumps({"type": "send", "room": LOBBY, "text": f"during {i}", "nonce": f"d{i}"}))
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        close_code = None
        try:
            while True:
                frame = recv_json(ws, 15)
                if frame["type"] == "ack":
                    acked.append(frame["id"])
        except ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else None
    assert close_code == 1001
    # twistd re-raises the signal on itself once it has shut down cleanly.
    assert server.process.wait(15) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    assert "shut down cleanly" in server.log_tail(), server.log_tail()
    poller.join(10)
    assert poll_result and poll_result[0].status_code == 200
    server.process = None
    server.start()
    stored = [m["id"] for m in poll(server, LOBBY, since=0).json()["messages"]]
    stored += [m["id"] for m in poll(server, LOBBY, since=stored[-1]).json()["messages"]]
    assert set(acked) <= set(stored) and len(acked) >= 300


def test_ten_thousand_abandoned_polls_leave_no_waiter(server_factory):
    # All from one address: the per-address limit is off, or it would refuse most of them.
    server = server_factory({"CHAT_MAX_CONNECTIONS_PER_IP": "0"})
    request = f"GET /poll?room={LOBBY}&since=0&timeout=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def abandon(batch: int) -> None:
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(batch)]
        for _, writer in connections:
            writer.write(request)
        await asyncio.gather(*(writer.drain() for _, writer in connections))
        await asyncio.to_thread(
            wait_for, lambda: health(server)["parked_polls"] == batch, 30, 0.05, f"{batch} polls to park"
        )
        for _, writer in connections:
            writer.transport.abort()

    for _ in range(10):
        asyncio.run(abandon(1000))
        wait_for(
            lambda: health(server)["parked_polls"] == 0, timeout=30, what="abandoned polls to be forgotten"
        )
    metrics = server.metrics()
    assert "chat_longpoll_parked 0.0" in metrics


def test_metrics_count_what_happened(server):
    alice = login(server, "alice")
    with ws_connect(server, query=f"room={LOBBY}") as reader, ws_connect(server, alice) as sender:
        recv_json(reader)
        pipeline_sends(sender, 5, "m", "m")
        for _ in range(5):
            recv_json(reader)
        text = server.metrics()
    for line in (
        "chat_messages_accepted_total 5.0",
        "chat_messages_published_total 5.0",
        # The five messages, and who was present when the reader subscribed.
        'chat_deliveries_total{transport="websocket"} 6.0',
        "chat_websocket_connections 2.0",
        "chat_subscriptions 1.0",
        'chat_threadpool_queue_depth{pool="chat-writer"}',
        "chat_db_batch_size_count",
        "chat_db_commit_seconds_bucket",
        "chat_fanout_latency_seconds_bucket",
    ):
        assert line in text, line
