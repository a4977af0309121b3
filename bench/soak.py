"""Soak: minutes of traffic and connection churn; server memory must stay flat.

    python -m bench.soak --minutes 3

Starts our server on a fresh SQLite database and fills a room's in-memory window past
its bound. Then, for the given time, it keeps a sender going, opens and drops WebSocket
subscribers and long-polls (some abandoned while parked), and samples the server's RSS
every few seconds. After a warm-up (the first
third), RSS may not grow by more than ``--tolerance-mb``. Exits 1 if it does, 0 if not.
Bounded in time and count; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from .loadgen import Tally, long_poller, open_subscribers, send_at_rate
from .run import Server


async def churn(server: Server, deadline: float, samples: list[tuple[float, float]]) -> dict[str, int]:
    # Fill the room's in-memory window past its bound first, so that what is measured
    # after warm-up is leaks, not the window filling up as designed.
    await send_at_rate(server.sender_target, 2500, 1000)
    counts = {"connections": 0, "polls": 0, "messages": 2500}
    started = time.monotonic()
    while time.monotonic() < deadline:
        tally = Tally()
        target = server.target
        subscribers = await open_subscribers(target, random.randint(50, 200), tally)
        stop = asyncio.Event()
        pollers = [
            asyncio.create_task(long_poller(target, tally, stop, target.since, hold=2)) for _ in range(50)
        ]
        await send_at_rate(server.sender_target, 200, 100)
        stop.set()
        for poller in pollers[:25]:  # half abandoned while parked, half left to finish
            poller.cancel()
        for subscriber in subscribers:
            subscriber.close()
        counts["connections"] += len(subscribers)
        counts["polls"] += len(pollers)
        counts["messages"] += 200
        samples.append((time.monotonic() - started, server.rss() / 2**20))
        await asyncio.gather(*pollers, return_exceptions=True)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--tolerance-mb", type=float, default=15.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="chat-soak-") as tmp:
        server = Server("ours", Path(tmp)).start()
        try:
            counts = asyncio.run(churn(server, time.monotonic() + args.minutes * 60, samples))
        finally:
            server.stop()
    warm = [rss for t, rss in samples if t >= samples[-1][0] / 3]
    growth = warm[-1] - min(warm)
    print(f"{counts} in {args.minutes:g} min; RSS after warm-up {min(warm):.1f} -> {warm[-1]:.1f} MiB")
    print("samples (s, MiB):", [(round(t), round(m, 1)) for t, m in samples])
    if growth > args.tolerance_mb:
        print(f"FAIL: RSS grew {growth:.1f} MiB after warm-up (tolerance {args.tolerance_mb:g})")
        return 1
    print(f"OK: RSS grew {growth:.1f} MiB after warm-up (tolerance {args.tolerance_mb:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
