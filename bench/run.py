"""One command for the whole benchmark: ``python -m bench.run`` (see bench/README.md).

Starts each server in turn on a free loopback port (ours under twistd on a fresh SQLite
database; a bare autobahn broadcast server; the Channels tutorial's chat on daphne), runs
the scenarios against it, and writes ``bench/results/<time>.json``,
``docs/bench/results.md`` and ``docs/bench/latency.png``.

The primary figure is the server's CPU time per delivery, from its own CPU counters over
the burst: it does not depend on how fast the generator is. Latency figures are only
meaningful while the generator's own CPU share (reported) is below about 75%.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from .loadgen import Tally, Target, long_poller, open_subscribers, percentiles, send_at_rate

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-pass-123456"
# Messages sent through every server before a measured burst: the first messages over
# fresh connections (and through the generator's fresh loop) are slower for every server.
WARM_UP = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One server under test, as a subprocess."""

    def __init__(self, kind: str, workdir: Path, profile: Path | None = None, root: Path = ROOT):
        self.kind = kind
        self.profile = profile
        # The checkout ours runs from: another build's worktree to compare (bench/README.md).
        self.root = root
        self.port = free_port()
        self.ops_port = free_port()
        self.workdir = workdir
        self.env = dict(os.environ)
        self.process: subprocess.Popen[bytes] | None = None
        self.cookie = ""

    def start(self) -> Server:
        log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115 - lives as long as the server
        if self.kind == "ours":
            self.env.update(
                DJANGO_DEBUG="0",
                DJANGO_SECRET_KEY="bench-" + "k" * 50,
                DATABASE_URL=f"sqlite:///{self.workdir / 'ours.sqlite3'}",
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
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.kind} did not start; see {self.workdir}") from None
                time.sleep(0.1)
        if self.kind == "ours":
            self.cookie = self._login()
        return self

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
        if self.kind != "ours":
            return 0
        return requests.get(f"http://127.0.0.1:{self.port}/poll?room=1&timeout=0", timeout=10).json()["last"]

    @property
    def target(self) -> Target:
        """Receivers start after the room's current newest message."""
        return Target(self.kind, self.port, self.cookie, since=self.last_id())

    @property
    def sender_target(self) -> Target:
        """Ours sends on a connection that is not subscribed, as a browser tab in another room would."""
        return Target("ours-sender" if self.kind == "ours" else self.kind, self.port, self.cookie)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def health(self) -> dict[str, Any]:
        return requests.get(f"http://127.0.0.1:{self.ops_port}/healthz", timeout=5).json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


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


async def wait_subscribed(server: Server, count: int) -> None:
    """Exactly ``count``: the previous scenario's aborted clients must be gone too, or the
    burst would start while the server is still closing them."""
    if server.kind == "ours":
        await wait_until(lambda: server.health()["subscriptions"] == count, 60)


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
    tally = Tally(expected_per_client=messages)
    started = time.perf_counter()
    target = server.target
    clients = await open_subscribers(target, subscribers, tally)
    connect_seconds = time.perf_counter() - started
    await wait_subscribed(server, subscribers)
    await send_at_rate(server.sender_target, WARM_UP, rate)
    await wait_until(lambda: tally.received >= subscribers * WARM_UP, 30)
    tally.restart()
    cpu0, gen0, wall0 = server.cpu_seconds(), own_cpu(), time.perf_counter()
    await send_at_rate(server.sender_target, messages, rate, start_seq=WARM_UP)
    expected = subscribers * messages
    await wait_until(lambda: tally.received >= expected, 30)
    cpu1, gen1, wall1 = server.cpu_seconds(), own_cpu(), time.perf_counter()
    for client in clients:
        client.close()
    # The references echo to the sender too: count what the server really delivered.
    server_deliveries = tally.received + (messages if server.kind != "ours" else 0)
    span = (tally.last_ns - tally.first_ns) / 1e9 or 1e-9
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
    }


@scenario
async def idle_memory(server: Server, connections: int) -> dict[str, Any]:
    before = server.rss()
    tally = Tally()
    clients = await open_subscribers(server.target, connections, tally)
    await wait_subscribed(server, connections)
    samples = [server.rss()]
    for _ in range(20):  # let the server settle: stop when RSS stops moving
        await asyncio.sleep(0.25)
        samples.append(server.rss())
        if abs(samples[-1] - samples[-2]) < 0.002 * samples[-1]:
            break
    after = samples[-1]
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


# --- the run --------------------------------------------------------------------------------


async def run_server(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    wanted = set(args.scenarios.split(","))
    results: dict[str, Any] = {}
    # Idle memory first, on a fresh process, before bursts have grown its heap.
    if "idle" in wanted:
        results["idle"] = await idle_memory(server, args.idle)
    if "broadcast" in wanted:
        results["broadcast"] = [
            await broadcast(server, subscribers, messages, rate)
            for subscribers, messages, rate in ((100, 500, 200), (1000, 200, 50))
        ]
    if server.kind == "ours":
        if "polls" in wanted:
            results["parked_polls"] = await parked_polls(server, 1000)
            results["mixed_room"] = await mixed_room(server, 500, 500, 20, 10)
        if "senders" in wanted:
            results["senders"] = await many_senders(server, 50, 100, 50)
        if "pages" in wanted:
            results["pages_under_chat"] = await pages_under_chat(server, 200, 20, 10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="ours,bare,channels")
    parser.add_argument("--idle", type=int, default=3000, help="idle connections for the memory figure")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--scenarios", default="idle,broadcast,polls,senders,pages")
    parser.add_argument("--profile", type=Path, help="cProfile our server's reactor thread into this file")
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
            server = Server(kind, Path(tmp), args.profile if kind == "ours" else None).start()
            try:
                print(f"== {kind}", flush=True)
                run["servers"][kind] = asyncio.run(run_server(server, args))
                print(json.dumps(run["servers"][kind], indent=1), flush=True)
            finally:
                server.stop()

    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{run['started'].replace(':', '')}.json").write_text(json.dumps(run, indent=1))
    if args.scenarios == parser.get_default("scenarios"):
        from .report import write_report

        write_report(run, args.out, " ".join(["python -m bench.run", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
