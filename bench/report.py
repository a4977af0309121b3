"""The benchmark's markdown table and plot, from one run's results.

``python -m bench.report bench/results/<time>.json`` prints the tables of any run, partial
ones too (``bench.run`` writes docs/bench/ only for a full run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = {
    "ours": "this server",
    "ours-redis": "this server, Redis, 1 process",
    "ours-2workers": "this server, Redis, 2 workers",
    "bare": "bare autobahn",
    "channels": "Channels (daphne)",
}


def write_report(run: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(_markdown(run, command))
    _plot(run, out / "latency.png")


def _markdown(run: dict[str, Any], command: str) -> str:
    servers = run["servers"]
    lines = [
        f"# Benchmark results ({run['started']}, {run['cpus']} CPUs, server and generator on one machine)",
        "",
        f"Made by `{command}`. Raw figures: `bench/results/`.",
        "",
        "## Broadcast: one sender, N WebSocket subscribers in one room",
        "",
        "| server | subscribers | msgs @ rate | delivered/expected | dup | out of order "
        "| p50 / p90 / p99 / max ms | deliveries/s | server CPU µs/delivery | generator CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, result in servers.items():
        for b in result.get("broadcast", []):
            lat = b["latency_ms"]
            lines.append(
                f"| {NAMES.get(kind, kind)} | {b['subscribers']} | {b['messages']} @ {b['rate']:g}/s "
                f"| {b['delivered']}/{b['expected']} | {b['duplicates']} | {b['out_of_order']} "
                f"| {lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} "
                f"| {b['deliveries_per_s']} | {b['server_cpu_us_per_delivery']} "
                f"| {b['generator_cpu_share']:.0%} |"
            )
    lines += [
        "",
        "## Idle subscribed connections",
        "",
        "| server | connections | KB per connection |",
        "| --- | --- | --- |",
    ]
    for kind, result in servers.items():
        idle = result.get("idle")
        if not idle:
            continue
        lines.append(f"| {NAMES.get(kind, kind)} | {idle['connections']} | {idle['kb_per_connection']} |")
    lines += _redis_sections(run)
    ours = servers.get("ours")
    if ours and "parked_polls" in ours:
        parked, mixed, senders, pages = (
            ours["parked_polls"],
            ours["mixed_room"],
            ours["senders"],
            ours["pages_under_chat"],
        )
        lines += [
            "",
            "## This server only",
            "",
            f"- **{parked['clients']} parked long-polls, one message**: {parked['delivered']} answered, "
            f"wake latency p50 {parked['wake_latency_ms']['p50']:.1f} ms, "
            f"p99 {parked['wake_latency_ms']['p99']:.1f} ms.",
            f"- **500 WebSocket + 500 long-poll clients, {mixed['messages']} messages at 20/s**: WebSocket "
            f"{mixed['websocket']['delivered']}/{mixed['websocket']['expected']} "
            f"(p99 {mixed['websocket']['latency_ms']['p99']:.1f} ms), long-poll "
            f"{mixed['longpoll']['delivered']}/{mixed['longpoll']['expected']} "
            f"(p99 {mixed['longpoll']['latency_ms']['p99']:.1f} ms), duplicates "
            f"{mixed['websocket']['duplicates'] + mixed['longpoll']['duplicates']}.",
            f"- **{senders['senders']} concurrent senders** (offered {senders['offered_per_s']:g}/s): "
            f"{senders['acked_per_s']} acknowledged (durably written) messages/s on SQLite, ack p50 "
            f"{senders['ack_latency_ms']['p50']:.1f} ms, p99 {senders['ack_latency_ms']['p99']:.1f} ms.",
            f"- **Django pages under chat** (200 subscribers, 20 msg/s): "
            f"chat p99 {pages['quiet_p99_ms']:.1f} ms "
            f"quiet, {pages['loaded_p99_ms']:.1f} ms while 8 threads fetch `/chats/` "
            f"({pages['page_requests_per_s']} pages/s); delivered {pages['loaded_delivered']}.",
        ]
    return "\n".join(lines) + "\n"


def _redis_sections(run: dict[str, Any]) -> list[str]:
    """The Redis backend against the in-memory one, two workers against one process, and
    the connections scenario, when the run has them."""
    servers = run["servers"]
    lines: list[str] = []
    variants = [kind for kind in ("ours-redis", "ours-2workers") if servers.get(kind, {}).get("broadcast")]
    if variants:
        lines += [
            "",
            "## Redis backend and workers (broadcast)",
            "",
            "CPU is every serving process's (both workers for two workers); redis-server's own "
            "CPU is apart. Order: every subscriber received the same ids in the same order.",
            "",
            "| server | subscribers | per worker | server CPU µs/delivery | redis-server CPU µs/delivery "
            "| p99 ms | delivered/expected | same order |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind in ("ours", *variants):
            for b in servers.get(kind, {}).get("broadcast", []):
                spread = "/".join(str(n) for n in b.get("subscribers_per_worker", [])) or "-"
                lines.append(
                    f"| {NAMES[kind]} | {b['subscribers']} | {spread} | {b['server_cpu_us_per_delivery']} "
                    f"| {b.get('redis_cpu_us_per_delivery', '-')} | {b['latency_ms']['p99']:.1f} "
                    f"| {b['delivered']}/{b['expected']} | {'yes' if b['order']['identical'] else 'NO'} |"
                )
    comparisons = run.get("comparisons", {})
    if comparisons:
        lines += [
            "",
            "| subscribers | comparison | CPU ratio | p99 ratio | target | met |",
            "| --- " * 6 + "|",
        ]
        for size, entry in comparisons.items():
            for name, c in entry.items():
                lines.append(
                    f"| {size} | {name.replace('_', ' ')} | {c['cpu']} | {c['p99']} | {c['target']} "
                    f"| {'-' if c['met'] is None else 'yes' if c['met'] else 'no'} |"
                )
    for kind, result in servers.items():
        c = result.get("connections")
        if not c:
            continue
        lat = c["latency_ms"]
        lines += [
            "",
            f"## {c['opened']} concurrent WebSockets ({NAMES.get(kind, kind)})",
            "",
            f"- Opened {c['opened']} of {c['connections']} from {len(c['generators'])} generator processes "
            f"in {c['connect_s']} s ({c['failed']} failed); per worker: "
            + ", ".join(str(w["connections"]) for w in c["per_worker"])
            + ".",
            f"- Memory: {c['kb_per_connection']} KB RSS per connection, summed over the workers "
            f"({c['rss_before_mb']} → {c['rss_after_mb']} MB).",
            f"- One message: {c['delivered']}/{c['expected']} delivered, {c['duplicates']} duplicates, "
            f"same order: {'yes' if c['order_identical'] else 'NO'}; latency p50 {lat['p50']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms; "
            f"{c['server_cpu_us_per_delivery']} µs server CPU per delivery.",
        ]
    return lines


def _plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput, cpu) = plt.subplots(1, 3, figsize=(15, 4.5))
    # One colour per server in every panel; p50 dotted, p99 solid.
    for index, (kind, result) in enumerate(run["servers"].items()):
        subs = [b["subscribers"] for b in result["broadcast"]]
        label = NAMES.get(kind, kind)
        color = f"C{index}"
        for key, style in (("p50", ":"), ("p99", "-")):
            latency.plot(
                subs,
                [b["latency_ms"][key] for b in result["broadcast"]],
                style,
                color=color,
                marker="o",
                label=f"{label} {key}",
            )
        throughput.plot(
            subs, [b["deliveries_per_s"] for b in result["broadcast"]], color=color, marker="o", label=label
        )
        cpu.plot(
            subs,
            [b["server_cpu_us_per_delivery"] for b in result["broadcast"]],
            color=color,
            marker="o",
            label=label,
        )
    latency.set(title="send → receive latency", xlabel="subscribers", ylabel="ms", xscale="log", yscale="log")
    throughput.set(title="deliveries per second", xlabel="subscribers", xscale="log")
    cpu.set(title="server CPU per delivery", xlabel="subscribers", ylabel="µs", xscale="log", yscale="log")
    for axes in (latency, throughput, cpu):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    fig.suptitle("100 subscribers: 500 msgs at 200/s; 1000 subscribers: 200 msgs at 50/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    import json
    import sys

    print(_markdown(json.loads(Path(sys.argv[1]).read_text()), f"python -m bench.report {sys.argv[1]}"))
