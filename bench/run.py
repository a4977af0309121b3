"""One command for the whole benchmark: ``python -m bench.run`` (see bench/README.md).

Starts each server in turn on a free loopback port (ours under twistd on a fresh SQLite
database; a bare autobahn broadcast server; the Channels tutorial's chat on daphne), runs
the scenarios against it, and writes ``bench/results/<time>.json``,
``docs/bench/results.md`` and ``docs/bench/latency.png``.

Ours also runs on Redis (``ours-redis``: one process; ``ours-2workers``: a supervisor and
two workers on one port), each with its own redis-server on a free loopback port.

The stream scenarios (``stream``, ``mixed-stream``; ours only) put their subscribers in
generator processes: Server-Sent Events against WebSocket (and long-poll) in the same room.

The primary figure is the server's CPU time per delivery, from its own CPU counters over
the burst: it does not depend on how fast the generator is. Latency figures are only
meaningful while the generator's own CPU share (reported) is below about 75%.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import multiprocessing
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import requests

from .loadgen import (
    Tally,
    Target,
    long_poller,
    open_subscribers,
    order_summary,
    orders,
    percentiles,
    send_at_rate,
    subscriber_process,
)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-pass-123456"
# Messages sent through every server before a measured burst: the first messages over
# fresh connections (and through the generator's fresh loop) are slower for every server.
WARM_UP = 5
# The broadcast size the Redis and workers targets are stated for (``compare``).
TARGET_SUBSCRIBERS = 1000
# Times a multi-worker broadcast opens its subscribers until every worker has some.
SPREAD_ATTEMPTS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (worker i's operators port is base + i)."""
    while True:
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue


# Our server's variants: name -> (Redis, worker processes). 0 workers: one process, no
# supervisor (CHAT_WORKERS=1); 2: a supervisor that binds the port and two workers.
OURS = {"ours": (False, 0), "ours-redis": (True, 0), "ours-2workers": (True, 2)}


class RedisProcess:
    """A private redis-server on a free loopback port, without persistence (never the shared one)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--loglevel", "warning",
            ],
            stdout=open(self.dir / "redis.log", "ab"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.dir}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """utime + stime from /proc/<pid>/stat (fields 14 and 15, after the ``(comm)``)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Figures read from ours' /metrics around a burst (``Server.counters``).
COUNTERS = {
    "recycled": re.compile(r"^chat_stream_recycled(?:_total)? (\S+)$", re.M),
    "slow_dropped": re.compile(
        r'^chat_slow_consumer_disconnects(?:_total)?\{transport="stream"\} (\S+)$', re.M
    ),
    "batches": re.compile(r"^chat_db_batch_size_count (\S+)$", re.M),
    "batched_messages": re.compile(r"^chat_db_batch_size_sum (\S+)$", re.M),
}


def per_batch(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Messages per database batch (one fan-out each) between two readings: the more, the
    fewer writes per delivery, and the cheaper a delivery."""
    batches = after["batches"] - before["batches"]
    return round((after["batched_messages"] - before["batched_messages"]) / batches, 2) if batches else None


class Server:
    """One server under test, as a subprocess (ours with workers: a supervisor and its children)."""

    def __init__(self, kind: str, workdir: Path, profile: Path | None = None, root: Path = ROOT):
        self.kind = kind
        self.is_ours = kind in OURS
        self.uses_redis, self.workers = OURS.get(kind, (False, 0))
        self.profile = profile
        # The checkout ours runs from: another build's worktree to compare (bench/README.md).
        self.root = root
        self.port = free_port()
        self.ops_port = free_ports(max(self.workers, 1))
        self.workdir = workdir
        self.env = dict(os.environ)
        self.process: subprocess.Popen[bytes] | None = None
        self.redis: RedisProcess | None = None
        # The processes that serve connections: the server, or the supervisor's workers.
        self.servers: list[psutil.Process] = []
        self.cookie = ""

    def start(self) -> Server:
        log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115 - lives as long as the server
        if self.is_ours:
            if self.uses_redis:
                self.redis = RedisProcess(self.workdir)
                self.env["CHAT_REDIS_URL"] = self.redis.url
            self.env.update(
                # Without CHAT_WORKERS, Redis would mean one worker per core.
                CHAT_WORKERS=str(max(self.workers, 1)),
                DJANGO_DEBUG="0",
                DJANGO_SECRET_KEY="bench-" + "k" * 50,
                DATABASE_URL=f"sqlite:///{self.workdir / (self.kind + '.sqlite3')}",
                CHAT_PORT=str(self.port),
                CHAT_OPS_PORT=str(self.ops_port),
                CHAT_SEND_RATE="0",
                CHAT_MAX_CONNECTIONS_PER_USER="0",
                CHAT_MAX_CONNECTIONS_PER_IP="0",
            )
            for args in (
                ["migrate", "--noinput", "-v0"],
                [
                    "shell",
                    "-c",
                    f"from django.contrib.auth.models import User; "
                    f"User.objects.create_user('bench', password={PASSWORD!r})",
                ],
            ):
                subprocess.run([sys.executable, "manage.py", *args], cwd=self.root, env=self.env, check=True)
            command = [shutil.which("twistd") or "twistd", "-n", "--pidfile=", "-y", "chatserver.tac"]
            if self.profile is not None:  # the reactor thread, written when the server stops
                command[1:1] = [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
        elif self.kind == "bare":
            command = [sys.executable, "-m", "bench.reference.bare_autobahn", str(self.port)]
        else:
            command = [
                shutil.which("daphne") or "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "bench.reference.channels_chat.asgi:application",
            ]
        self.process = subprocess.Popen(
            command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} did not start; see {self.workdir}")
            time.sleep(0.1)
        root = psutil.Process(self.process.pid)
        self.servers = root.children() if self.workers else [root]
        if len(self.servers) != max(self.workers, 1):
            raise RuntimeError(f"{self.kind}: {len(self.servers)} worker processes, not {self.workers}")
        if self.is_ours:
            self.cookie = self._login()
        return self

    def _ready(self) -> bool:
        """The port accepts; ours: every worker answers /healthz on its operators' port (a
        supervisor's port accepts into its backlog before any worker is up)."""
        try:
            if self.is_ours:
                for url in self.ops_urls:
                    if requests.get(url + "/healthz", timeout=1).status_code != 200:
                        return False
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except (OSError, requests.RequestException):
            return False

    @property
    def ops_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ops_port + i}" for i in range(max(self.workers, 1))]

    def _login(self) -> str:
        session = requests.Session()
        url = f"http://127.0.0.1:{self.port}/accounts/login/"
        session.get(url, timeout=10)
        session.post(
            url,
            data={
                "username": "bench",
                "password": PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": url},
            timeout=10,
        )
        return "; ".join(f"{c.name}={c.value}" for c in session.cookies)

    def last_id(self) -> int:
        if not self.is_ours:
            return 0
        return requests.get(f"http://127.0.0.1:{self.port}/poll?room=1&timeout=0", timeout=10).json()["last"]

    @property
    def target(self) -> Target:
        """Receivers start after the room's current newest message."""
        return Target("ours" if self.is_ours else self.kind, self.port, self.cookie, since=self.last_id())

    @property
    def sender_target(self) -> Target:
        """Ours sends on a connection that is not subscribed, as a browser tab in another room would."""
        return Target("ours-sender" if self.is_ours else self.kind, self.port, self.cookie)

    def cpu_seconds(self) -> float:
        """User + system CPU of every serving process (all the workers; not the supervisor,
        which only holds the listening socket). A worker that was restarted fails this."""
        total = 0.0
        for process in self.servers:
            times = process.cpu_times()  # psutil checks the pid was not reused
            total += times.user + times.system
        return total

    def supervisor_cpu_seconds(self) -> float:
        if not self.workers:
            return 0.0
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return sum(process.memory_info().rss for process in self.servers)

    def rss_each(self) -> list[int]:
        return [process.memory_info().rss for process in self.servers]

    def health_each(self) -> list[dict[str, Any]]:
        return [requests.get(url + "/healthz", timeout=10).json() for url in self.ops_urls]

    def health(self) -> dict[str, Any]:
        """The workers' /healthz, counts summed."""
        merged: dict[str, Any] = {}
        for health in self.health_each():
            for key, value in health.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    merged[key] = merged.get(key, 0) + value
                else:
                    merged.setdefault(key, value)
        return merged

    def counters(self) -> dict[str, float]:
        """Ours, from every worker's /metrics: the event streams ended after
        CHAT_STREAM_MAX_BYTES (``recycled``) and those dropped as slow consumers; the
        database batches written (each is one fan-out) and the messages in them."""
        totals = dict.fromkeys(COUNTERS, 0.0)
        for url in self.ops_urls:
            text = requests.get(url + "/metrics", timeout=10).text
            for name, pattern in COUNTERS.items():
                found = pattern.search(text)
                if found:
                    totals[name] += float(found.group(1))
        return totals

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # A supervisor that had to be killed leaves its workers behind: end them by pid.
        for worker in self.servers:
            if worker.pid != self.process.pid and worker.is_running():
                worker.kill()
        if self.redis is not None:
            self.redis.stop()


@contextlib.contextmanager
def running(kind: str, root: Path = ROOT, **env: str) -> Iterator[Server]:
    """One server in a temporary directory, with ``env`` on top of the bench's settings,
    stopped at the end: for the benches that measure one thing against one build."""
    with tempfile.TemporaryDirectory() as folder:
        server = Server(kind, Path(folder), root=root)
        server.env.update(env)
        try:
            yield server.start()
        finally:
            server.stop()


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def wait_subscribed(server: Server, count: int, timeout: float = 60) -> None:
    """Exactly ``count``: the previous scenario's aborted clients must be gone too, or the
    burst would start while the server is still closing them."""
    if server.is_ours:
        await wait_until(lambda: server.health()["subscriptions"] == count, timeout)


async def settled_rss(server: Server) -> int:
    """The serving processes' RSS once it stops moving (at most 5 s)."""
    samples = [server.rss()]
    for _ in range(20):
        await asyncio.sleep(0.25)
        samples.append(server.rss())
        if abs(samples[-1] - samples[-2]) < 0.002 * samples[-1]:
            break
    return samples[-1]


# --- scenarios ------------------------------------------------------------------------------


def scenario(fn):
    """Each scenario starts from a clean heap, and the generator never collects during one.

    The generator keeps every latency sample and thousands of client objects; a full
    collection in the middle of a burst would stall its event loop and show up as server
    latency. ``main`` turns automatic collection off.
    """

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        gc.collect()
        return await fn(*args, **kwargs)

    return run


@scenario
async def broadcast(server: Server, subscribers: int, messages: int, rate: float) -> dict[str, Any]:
    """N subscribers, one sender at ``rate``: delivery, latency, server CPU per delivery."""
    target = server.target
    for attempt in range(1, SPREAD_ATTEMPTS + 1):
        tally = Tally(expected_per_client=messages, track_order=server.is_ours)
        started = time.perf_counter()
        clients = await open_subscribers(target, subscribers, tally)
        connect_seconds = time.perf_counter() - started
        await wait_subscribed(server, subscribers)
        # Where the kernel put the subscribers (one figure per worker). Workers race to
        # accept on the one socket, and a burst of 100 can land 99 on one of them: open
        # them again until each worker has at least half its even share.
        spread = [h.get("subscriptions", 0) for h in server.health_each()] if server.is_ours else []
        if not server.workers or min(spread) * 2 * server.workers >= subscribers:
            break
        if attempt < SPREAD_ATTEMPTS:
            for client in clients:
                client.close()
            await wait_subscribed(server, 0)
    counters0 = server.counters() if server.is_ours else {}
    await send_at_rate(server.sender_target, WARM_UP, rate)
    await wait_until(lambda: tally.received >= subscribers * WARM_UP, 30)
    tally.restart()
    redis_cpu0 = server.redis.cpu_seconds() if server.redis else 0.0
    supervisor0 = server.supervisor_cpu_seconds()
    cpu0, gen0, wall0 = server.cpu_seconds(), own_cpu(), time.perf_counter()
    await send_at_rate(server.sender_target, messages, rate, start_seq=WARM_UP)
    expected = subscribers * messages
    await wait_until(lambda: tally.received >= expected, 30)
    cpu1, gen1, wall1 = server.cpu_seconds(), own_cpu(), time.perf_counter()
    redis_cpu1 = server.redis.cpu_seconds() if server.redis else 0.0
    supervisor1 = server.supervisor_cpu_seconds()
    for client in clients:
        client.close()
    # The references echo to the sender too: count what the server really delivered.
    server_deliveries = tally.received + (messages if not server.is_ours else 0)
    span = (tally.last_ns - tally.first_ns) / 1e9 or 1e-9
    extra: dict[str, Any] = {}
    if server.is_ours:
        # Warm-up included: every subscriber, whichever worker it is on, the same ids in order.
        extra["order"] = orders(clients)
        extra["messages_per_batch"] = per_batch(counters0, server.counters())
    if server.workers:
        extra["subscribers_per_worker"] = spread
        extra["spread_attempts"] = attempt
        extra["supervisor_cpu_ms"] = round((supervisor1 - supervisor0) * 1e3, 1)
    if server.redis:
        extra["redis_cpu_ms"] = round((redis_cpu1 - redis_cpu0) * 1e3, 1)
        extra["redis_cpu_us_per_delivery"] = round(
            (redis_cpu1 - redis_cpu0) / max(server_deliveries, 1) * 1e6, 3
        )
    return {
        "subscribers": subscribers,
        "messages": messages,
        "rate": rate,
        "expected": expected,
        "delivered": tally.received,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "latency_ms": percentiles(tally.latencies_ns),
        "deliveries_per_s": round(tally.received / span),
        "connect_s": round(connect_seconds, 3),
        "server_cpu_us_per_delivery": round((cpu1 - cpu0) / max(server_deliveries, 1) * 1e6, 2),
        "generator_cpu_share": round((gen1 - gen0) / (wall1 - wall0), 3),
        **extra,
    }


@scenario
async def idle_memory(server: Server, connections: int) -> dict[str, Any]:
    before = server.rss()
    tally = Tally()
    clients = await open_subscribers(server.target, connections, tally)
    await wait_subscribed(server, connections)
    after = await settled_rss(server)
    for client in clients:
        client.close()
    return {
        "connections": connections,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "kb_per_connection": round((after - before) / connections / 1024, 2),
    }


@scenario
async def parked_polls(server: Server, clients: int) -> dict[str, Any]:
    """``clients`` long-polls parked in one room; one message answers all of them."""
    tally = Tally(expected_per_client=1)
    stop = asyncio.Event()
    target = server.target
    pollers = [asyncio.create_task(long_poller(target, tally, stop, target.since)) for _ in range(clients)]
    await wait_until(lambda: server.health()["parked_polls"] >= clients, 60)
    stop.set()
    await send_at_rate(server.sender_target, 1, 1)
    await wait_until(lambda: tally.received >= clients, 30)
    for task in pollers:
        task.cancel()
    return {
        "clients": clients,
        "delivered": tally.received,
        "wake_latency_ms": percentiles(tally.latencies_ns),
    }


@scenario
async def mixed_room(
    server: Server, ws_clients: int, poll_clients: int, rate: float, seconds: float
) -> dict[str, Any]:
    messages = int(rate * seconds)
    ws_tally, poll_tally = Tally(expected_per_client=messages), Tally(expected_per_client=messages)
    target = server.target
    clients = await open_subscribers(target, ws_clients, ws_tally)
    stop = asyncio.Event()
    pollers = [
        asyncio.create_task(long_poller(target, poll_tally, stop, target.since)) for _ in range(poll_clients)
    ]
    await wait_until(lambda: server.health()["parked_polls"] >= poll_clients, 60)
    await send_at_rate(server.sender_target, messages, rate)
    await wait_until(
        lambda: ws_tally.received >= ws_clients * messages and poll_tally.received >= poll_clients * messages,
        30,
    )
    stop.set()
    for client in clients:
        client.close()
    for task in pollers:
        task.cancel()
    return {
        "messages": messages,
        "websocket": {
            "expected": ws_clients * messages,
            "delivered": ws_tally.received,
            "duplicates": ws_tally.duplicates,
            "latency_ms": percentiles(ws_tally.latencies_ns),
        },
        "longpoll": {
            "expected": poll_clients * messages,
            "delivered": poll_tally.received,
            "duplicates": poll_tally.duplicates,
            "latency_ms": percentiles(poll_tally.latencies_ns),
        },
    }


@scenario
async def many_senders(server: Server, senders: int, per_sender: int, rate: float) -> dict[str, Any]:
    started = time.perf_counter()
    acks = await asyncio.gather(
        *(
            send_at_rate(server.sender_target, per_sender, rate, start_seq=i * per_sender)
            for i in range(senders)
        )
    )
    elapsed = time.perf_counter() - started
    latencies = [value for chunk in acks for value in chunk]
    return {
        "senders": senders,
        "offered_per_s": senders * rate,
        "acked": len(latencies),
        "acked_per_s": round(len(latencies) / elapsed),
        "ack_latency_ms": percentiles(latencies),
    }


def _hammer(port: int, seconds: float, threads: int, result: Any) -> None:
    import threading

    count = [0]
    deadline = time.monotonic() + seconds

    def loop() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            session.get(f"http://127.0.0.1:{port}/chats/", timeout=10)
            count[0] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result.value = count[0] / seconds


async def pages_under_chat(server: Server, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
    quiet = await broadcast(server, subscribers, int(rate * seconds), rate)
    result = multiprocessing.Value("d", 0.0)
    hammer = multiprocessing.Process(target=_hammer, args=(server.port, seconds + 2, 8, result))
    hammer.start()
    loaded = await broadcast(server, subscribers, int(rate * seconds), rate)
    hammer.join(60)
    return {
        "quiet_p99_ms": quiet["latency_ms"]["p99"],
        "loaded_p99_ms": loaded["latency_ms"]["p99"],
        "loaded_delivered": f"{loaded['delivered']}/{loaded['expected']}",
        "page_requests_per_s": round(result.value, 1),
    }


async def _from_pipe(pipe: Any, timeout: float) -> dict[str, Any]:
    """The next report of a generator process (it may take minutes: read it off the loop)."""
    ready = await asyncio.get_running_loop().run_in_executor(None, pipe.poll, timeout)
    if not ready:
        raise TimeoutError(f"no word from a generator process in {timeout:g} s")
    return pipe.recv()


@scenario
async def many_connections(server: Server, connections: int, generators: int) -> dict[str, Any]:
    """``connections`` subscribed WebSockets from ``generators`` processes, one message to all.

    Each generator process has its own source address (127.0.0.2, .3, ...), so each has
    the whole ephemeral port range to itself, and raises its own descriptor limit. Memory
    is the serving processes' RSS (all the workers) after the connections, less before.
    """
    before = await settled_rss(server)
    before_each = server.rss_each()
    redis_before = server.redis.rss() if server.redis else 0
    since = server.last_id()
    shares = [
        connections // generators + (1 if i < connections % generators else 0) for i in range(generators)
    ]
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    cpu0, started = server.cpu_seconds(), time.perf_counter()
    for index, count in enumerate(shares):
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=subscriber_process,
            args=(child_end, server.port, since, count, f"127.0.0.{index + 2}", 100),
            daemon=True,
        )
        process.start()
        pipes.append(parent_end)
        processes.append(process)
    try:
        opened = await asyncio.gather(*(_from_pipe(pipe, 900) for pipe in pipes))
        total = sum(report["opened"] for report in opened)
        connect_seconds = time.perf_counter() - started
        await wait_subscribed(server, total, timeout=120)
        cpu1 = server.cpu_seconds()
        each = server.health_each()
        after = await settled_rss(server)
        after_each = server.rss_each()
        redis_after = server.redis.rss() if server.redis else 0
        descriptors = [process.num_fds() for process in server.servers]

        # One message to all of them.
        gen0 = own_cpu()
        cpu2, wall2 = server.cpu_seconds(), time.perf_counter()
        acks = await send_at_rate(server.sender_target, 1, 1)
        for pipe in pipes:
            pipe.send({"do": "expect", "messages": 1, "timeout": 60})
        received = await asyncio.gather(*(_from_pipe(pipe, 120) for pipe in pipes))
        cpu3, wall3 = server.cpu_seconds(), time.perf_counter()
        gen1 = own_cpu()
        for pipe in pipes:
            pipe.send({"do": "close"})
        await asyncio.gather(*(_from_pipe(pipe, 60) for pipe in pipes))
    finally:
        for pipe, process in zip(pipes, processes, strict=True):
            if process.is_alive():  # after a failure: it waits for a command
                with contextlib.suppress(OSError):
                    pipe.send({"do": "close"})
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    delivered = sum(r["received"] for r in received)
    all_orders: Counter[tuple[int, ...]] = Counter()
    for r in received:
        all_orders.update(r["transports"]["ws"]["orders"])
    latencies = [value for r in received for value in r["transports"]["ws"]["latencies_ns"]]
    return {
        "connections": connections,
        "generators": [
            {k: v for k, v in report.items() if k != "rlimit_nofile"} | {"share": share}
            for report, share in zip(opened, shares, strict=True)
        ],
        "generator_nofile_limit": opened[0]["rlimit_nofile"],
        "opened": total,
        "failed": sum(report["failed"] for report in opened),
        "connect_s": round(connect_seconds, 2),
        "server_cpu_us_per_connection": round((cpu1 - cpu0) / max(total, 1) * 1e6, 1),
        "per_worker": [
            {
                "connections": health.get("connections"),
                "websockets": health.get("websockets"),
                "subscriptions": health.get("subscriptions"),
                "max_connections": health.get("max_connections"),
                "open_fds": fds,
                "rss_before_mb": round(b / 2**20, 1),
                "rss_after_mb": round(a / 2**20, 1),
            }
            for health, fds, b, a in zip(each, descriptors, before_each, after_each, strict=True)
        ],
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_connection": round((after - before) / max(total, 1) / 1024, 2),
        "redis_rss_delta_mb": round((redis_after - redis_before) / 2**20, 2),
        "acked": len(acks),
        "expected": total,
        "delivered": delivered,
        "duplicates": sum(r["duplicates"] for r in received),
        "order_identical": len(all_orders) <= 1,
        "latency_ms": percentiles(latencies),
        "broadcast_server_cpu_ms": round((cpu3 - cpu2) * 1e3, 1),
        "server_cpu_us_per_delivery": round((cpu3 - cpu2) / max(delivered, 1) * 1e6, 2),
        "broadcast_wall_s": round(wall3 - wall2, 2),
        "parent_generator_cpu_s": round(gen1 - gen0, 2),
    }


# --- the event stream (Server-Sent Events), against the WebSocket and the long-poll ---------

TRANSPORT_NAMES = {"ws": "websocket", "stream": "stream", "poll": "longpoll"}


async def wait_idle(server: Server, timeout: float = 60) -> bool:
    """No subscription and no stream left from the previous scenario (aborted clients are
    closed by the server as it notices)."""
    return await wait_until(
        lambda: (lambda h: h["subscriptions"] == 0 and h.get("streams", 0) == 0)(server.health()), timeout
    )


async def wait_transports(server: Server, opened: dict[str, int], timeout: float = 60) -> bool:
    """Every WebSocket subscribed, every stream open, every long-poll parked."""

    def ready() -> bool:
        health = server.health()
        subscribed = opened.get("ws", 0) + opened.get("stream", 0)
        return (
            health["websockets"] == opened.get("ws", 0)
            and health.get("streams", 0) == opened.get("stream", 0)
            and health["parked_polls"] >= opened.get("poll", 0)
            and health["subscriptions"] >= subscribed
        )

    return await wait_until(ready, timeout)


async def _ask(pipes: list[Any], command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    for pipe in pipes:
        pipe.send(command)
    return list(await asyncio.gather(*(_from_pipe(pipe, timeout) for pipe in pipes)))


@scenario
async def generator_room(
    server: Server, counts: dict[str, int], messages: int, rate: float, processes: int
) -> dict[str, Any]:
    """Subscribers of ours' room 1 of each kind in ``counts`` ("ws", "stream", "poll"), in
    ``processes`` generator processes, each kind spread evenly over all of them (so that
    the kinds of one room are measured by the same event loops); ``WARM_UP`` messages,
    then ``messages`` at ``rate``. Server CPU is counted over the burst, per delivery over
    every kind; the rest per kind."""
    await wait_idle(server)
    since = server.last_id()
    shares = [
        {kind: n // processes + (1 if i < n % processes else 0) for kind, n in counts.items()}
        for i in range(processes)
    ]
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    started = time.perf_counter()
    for index, share in enumerate(shares):
        parent_end, child_end = context.Pipe()
        child = context.Process(
            target=subscriber_process,
            args=(child_end, server.port, since, share, f"127.0.0.{index + 2}", 100),
            daemon=True,
        )
        child.start()
        pipes.append(parent_end)
        children.append(child)
    try:
        opened = await asyncio.gather(*(_from_pipe(pipe, 300) for pipe in pipes))
        connect_seconds = time.perf_counter() - started
        per_kind = {kind: sum(o["opened_per_kind"].get(kind, 0) for o in opened) for kind in counts}
        all_ready = await wait_transports(server, per_kind)
        counters0 = server.counters()
        await send_at_rate(server.sender_target, WARM_UP, rate)
        await _ask(pipes, {"do": "expect", "messages": WARM_UP, "timeout": 30}, 60)
        await _ask(pipes, {"do": "restart"}, 30)
        cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
        acks = await send_at_rate(server.sender_target, messages, rate, start_seq=WARM_UP)
        received = await _ask(pipes, {"do": "expect", "messages": messages, "timeout": 60}, 120)
        cpu1, wall1 = server.cpu_seconds(), time.perf_counter()
        counters1 = server.counters()
        await _ask(pipes, {"do": "close"}, 60)
    finally:
        for pipe, child in zip(pipes, children, strict=True):
            if child.is_alive():  # after a failure: it waits for a command
                with contextlib.suppress(OSError):
                    pipe.send({"do": "close"})
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    transports: dict[str, Any] = {}
    for kind in counts:
        reports = [r["transports"][kind] for r in received if kind in r["transports"]]
        delivered = sum(t["received"] for t in reports)
        firsts = [t["first_ns"] for t in reports if t["first_ns"]]
        span = (max(t["last_ns"] for t in reports) - min(firsts)) / 1e9 if firsts else 0.0
        entry: dict[str, Any] = {
            "clients": per_kind[kind],
            "expected": per_kind[kind] * messages,
            "delivered": delivered,
            "duplicates": sum(t["duplicates"] for t in reports),
            "out_of_order": sum(t["out_of_order"] for t in reports),
            "latency_ms": percentiles([value for t in reports for value in t["latencies_ns"]]),
            "deliveries_per_s": round(delivered / span) if span else 0,
        }
        if kind != "poll":
            all_orders: Counter[tuple[int, ...]] = Counter()
            for t in reports:
                all_orders.update(t["orders"])
            # Warm-up included: every subscriber the same ids, in increasing order.
            entry["order"] = order_summary(all_orders)
        if kind == "stream":
            entry["reconnects"] = sum(t["reconnects"] for t in reports)
            entry["errors"] = sum(t["errors"] for t in reports)
        transports[TRANSPORT_NAMES[kind]] = entry
    delivered = sum(entry["delivered"] for entry in transports.values())
    return {
        "messages": messages,
        "rate": rate,
        "generator_processes": processes,
        "connect_s": round(connect_seconds, 2),
        "failed_to_open": sum(o["failed"] for o in opened),
        "open_errors": [e for o in opened for e in o["errors"]],
        "all_subscribed": all_ready,
        "acked": len(acks),
        "server_cpu_us_per_delivery": round((cpu1 - cpu0) / max(delivered, 1) * 1e6, 2),
        "burst_wall_s": round(wall1 - wall0, 2),
        # The busiest generator process, over the burst (and the wait for its end).
        "generator_cpu_share": round(max(r["cpu_s"] / max(r["wall_s"], 1e-9) for r in received), 3),
        # Warm-up included (the counters are read outside the CPU window).
        "messages_per_batch": per_batch(counters0, counters1),
        "server_stream": {
            name: int(counters1[name] - counters0[name]) for name in ("recycled", "slow_dropped")
        },
        "transports": transports,
    }


def _one_transport(room: dict[str, Any], name: str, subscribers: int) -> dict[str, Any]:
    """A one-transport room, as a broadcast entry is laid out."""
    common = {k: v for k, v in room.items() if k != "transports"}
    return {"subscribers": subscribers, **common, **room["transports"][name]}


def complete(entry: dict[str, Any]) -> bool:
    """Every delivery arrived, once; with an order, every subscriber the same, increasing."""
    order = entry.get("order")
    return (
        entry["delivered"] == entry["expected"]
        and entry["duplicates"] == 0
        and (order is None or (order["identical"] and order["increasing"]))
    )


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


async def stream_broadcast(
    server: Server, subscribers: int, messages: int, rate: float, processes: int
) -> dict[str, Any]:
    """N event streams in one room, the broadcast scenario's burst; then, for a figure from
    the same generator processes, N WebSockets the same way."""
    stream = _one_transport(
        await generator_room(server, {"stream": subscribers}, messages, rate, processes),
        "stream",
        subscribers,
    )
    ws = _one_transport(
        await generator_room(server, {"ws": subscribers}, messages, rate, processes), "websocket", subscribers
    )
    return {
        "subscribers": subscribers,
        "messages": messages,
        "rate": rate,
        "stream": stream,
        "websocket_same_generators": ws,
        "cpu_ratio_vs_same_generators": _ratio(
            stream["server_cpu_us_per_delivery"], ws["server_cpu_us_per_delivery"]
        ),
    }


def judge_stream(stream: dict[str, Any], broadcasts: list[dict[str, Any]]) -> None:
    """Set the stream scenario's comparison with the broadcast scenario's WebSocket figure for
    the same burst (this run, this server), when there is one; else with the WebSocket
    figure taken through the same generator processes."""
    same = [
        b
        for b in broadcasts
        if (b["subscribers"], b["messages"], b["rate"])
        == (stream["subscribers"], stream["messages"], stream["rate"])
    ]
    cpu = stream["stream"]["server_cpu_us_per_delivery"]
    if same:
        ws = same[-1]
        stream["websocket_broadcast"] = {
            "server_cpu_us_per_delivery": ws["server_cpu_us_per_delivery"],
            "messages_per_batch": ws.get("messages_per_batch"),
            "latency_ms": ws["latency_ms"],
            "delivered": ws["delivered"],
            "expected": ws["expected"],
        }
        stream["cpu_ratio_vs_broadcast"] = _ratio(cpu, ws["server_cpu_us_per_delivery"])
        ratio, basis = stream["cpu_ratio_vs_broadcast"], "broadcast"
    else:
        ratio, basis = stream["cpu_ratio_vs_same_generators"], "same_generators"
    stream["cpu_ratio"], stream["cpu_ratio_basis"] = ratio, basis
    stream["target"] = "stream CPU per delivery <= 1.5x the WebSocket's"
    stream["met"] = ratio is not None and ratio <= 1.5
    stream["complete"] = complete(stream["stream"])


async def mixed_stream(
    server: Server, clients: int, messages: int, rate: float, processes: int
) -> dict[str, Any]:
    """One room of ``clients`` WebSockets + ``clients`` event streams at ``rate``; then the
    same with long-polls instead of streams, measured the same way."""
    stream_room = await generator_room(server, {"ws": clients, "stream": clients}, messages, rate, processes)
    poll_room = await generator_room(server, {"ws": clients, "poll": clients}, messages, rate, processes)
    stream_room.update(
        p99_ratio=_ratio(
            stream_room["transports"]["stream"]["latency_ms"]["p99"],
            stream_room["transports"]["websocket"]["latency_ms"]["p99"],
        )
    )
    poll_room.update(
        p99_ratio=_ratio(
            poll_room["transports"]["longpoll"]["latency_ms"]["p99"],
            poll_room["transports"]["websocket"]["latency_ms"]["p99"],
        )
    )
    lossless = all(complete(t) for room in (stream_room, poll_room) for t in room["transports"].values())
    return {
        "clients_per_transport": clients,
        "messages": messages,
        "rate": rate,
        "websocket_stream": stream_room,
        "websocket_longpoll": poll_room,
        "target": "stream p99 <= 2x the WebSocket p99 in the same room; nothing lost on either",
        "met": stream_room["p99_ratio"] is not None and stream_room["p99_ratio"] <= 2 and lossless,
        "complete": lossless,
    }


def compare(servers: dict[str, Any]) -> dict[str, Any]:
    """Ratios from one run: Redis with one process against the in-memory backend, and two
    workers against one process, per subscriber count; the targets apply at 1000."""

    def by_size(kind: str) -> dict[int, dict[str, Any]]:
        return {b["subscribers"]: b for b in servers.get(kind, {}).get("broadcast", [])}

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    memory, redis, workers = by_size("ours"), by_size("ours-redis"), by_size("ours-2workers")
    result: dict[str, Any] = {}
    for size in sorted(set(memory) | set(redis) | set(workers)):
        entry: dict[str, Any] = {}
        m, r, w = memory.get(size), redis.get(size), workers.get(size)
        if m and r:
            cpu = ratio(r["server_cpu_us_per_delivery"], m["server_cpu_us_per_delivery"])
            p99 = ratio(r["latency_ms"]["p99"], m["latency_ms"]["p99"])
            entry["redis_vs_memory"] = {
                "cpu": cpu,
                "p99": p99,
                "target": "cpu <= 1.2, p99 <= 1.5",
                "met": cpu is not None and p99 is not None and cpu <= 1.2 and p99 <= 1.5,
            }
        for name, one in (("2workers_vs_redis_1process", r), ("2workers_vs_memory_1process", m)):
            if w and one:
                cpu = ratio(w["server_cpu_us_per_delivery"], one["server_cpu_us_per_delivery"])
                entry[name] = {
                    "cpu": cpu,
                    "p99": ratio(w["latency_ms"]["p99"], one["latency_ms"]["p99"]),
                    "target": "cpu <= 1.15, nothing lost, same order",
                    "met": cpu is not None
                    and cpu <= 1.15
                    and w["delivered"] == w["expected"]
                    and w["duplicates"] == 0
                    and w["order"]["identical"],
                }
        if size != TARGET_SUBSCRIBERS:  # ratios only: the targets are stated at 1000
            for value in entry.values():
                value["target"], value["met"] = "-", None
        if entry:
            result[str(size)] = entry
    return result


# --- the run --------------------------------------------------------------------------------


async def run_server(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    wanted = set(args.scenarios.split(","))
    results: dict[str, Any] = {}
    # Connections first, on a fresh process (best run alone: bench/README.md).
    if "connections" in wanted and server.is_ours:
        results["connections"] = await many_connections(server, args.connections, args.generators)
    # Idle memory first, on a fresh process, before bursts have grown its heap.
    if "idle" in wanted:
        results["idle"] = await idle_memory(server, args.idle)
    if "broadcast" in wanted:
        results["broadcast"] = [
            await broadcast(server, subscribers, messages, rate)
            for subscribers, messages, rate in args.broadcast
        ]
    # The event stream is ours only: the reference servers have none.
    if server.is_ours and "stream" in wanted:
        subscribers, messages, rate = args.stream
        results["stream"] = await stream_broadcast(server, subscribers, messages, rate, args.processes)
        judge_stream(results["stream"], results.get("broadcast", []))
    if server.is_ours and "mixed-stream" in wanted:
        clients, messages, rate = args.mixed_stream
        results["mixed_stream"] = await mixed_stream(server, clients, messages, rate, args.processes)
    if server.is_ours:
        if "polls" in wanted:
            results["parked_polls"] = await parked_polls(server, 1000)
            results["mixed_room"] = await mixed_room(server, 500, 500, 20, 10)
        if "senders" in wanted:
            results["senders"] = await many_senders(server, 50, 100, 50)
        if "pages" in wanted:
            results["pages_under_chat"] = await pages_under_chat(server, 200, 20, 10)
    return results


def _bursts(text: str) -> list[tuple[int, int, float]]:
    return [_burst(item) for item in text.split(",")]


def _burst(text: str) -> tuple[int, int, float]:
    sizes, rate = text.split("@")
    subscribers, messages = sizes.split("x")
    return int(subscribers), int(messages), float(rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default="ours,bare,channels", help="of ours, ours-redis, ours-2workers, bare, channels"
    )
    parser.add_argument("--idle", type=int, default=3000, help="idle connections for the memory figure")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--scenarios", default="idle,broadcast,stream,mixed-stream,polls,senders,pages")
    parser.add_argument("--profile", type=Path, help="cProfile our server's reactor thread into this file")
    parser.add_argument(
        "--broadcast",
        type=_bursts,
        default="100x500@200,1000x200@50",
        help="broadcast bursts: SUBSCRIBERSxMESSAGES@RATE, comma-separated",
    )
    parser.add_argument(
        "--stream",
        type=_burst,
        default="1000x200@50",
        help="the stream scenario: SUBSCRIBERSxMESSAGES@RATE (the WebSocket figure is the "
        "broadcast burst of the same size)",
    )
    parser.add_argument(
        "--mixed-stream",
        type=_burst,
        default="500x200@20",
        help="the mixed-stream scenario: CLIENTS (of each transport) x MESSAGES @ RATE",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="generator processes for the stream and mixed-stream scenarios' subscribers",
    )
    parser.add_argument(
        "--connections", type=int, default=20000, help="WebSockets for the connections scenario"
    )
    parser.add_argument(
        "--generators", type=int, default=4, help="load-generator processes for the connections scenario"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ["PYTHONPATH"] = str(ROOT)
    gc.disable()

    run: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpus": os.cpu_count(),
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        for kind in args.servers.split(","):
            server = Server(kind, Path(tmp), args.profile if kind == "ours" else None)
            try:  # a server that fails to start still has its redis-server (and workers) ended
                server.start()
                print(f"== {kind}", flush=True)
                run["servers"][kind] = asyncio.run(run_server(server, args))
                print(json.dumps(run["servers"][kind], indent=1), flush=True)
            finally:
                server.stop()
    comparisons = compare(run["servers"])
    if comparisons:
        run["comparisons"] = comparisons
        print("== comparisons", json.dumps(comparisons, indent=1), sep="\n", flush=True)

    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{run['started'].replace(':', '')}.json").write_text(json.dumps(run, indent=1))
    defaults = (
        args.scenarios == parser.get_default("scenarios")
        and args.broadcast == _bursts(parser.get_default("broadcast"))
        and args.stream == _burst(parser.get_default("stream"))
        and args.mixed_stream == _burst(parser.get_default("mixed_stream"))
    )
    if defaults:
        from .report import write_report

        write_report(run, args.out, " ".join(["python -m bench.run", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
