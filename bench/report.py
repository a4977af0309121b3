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
    lines += _stream_sections(run)
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


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def _same_order(entry: dict[str, Any]) -> str:
    order = entry.get("order")
    return "-" if order is None else _yes(order["identical"] and order["increasing"])


def _stream_sections(run: dict[str, Any]) -> list[str]:
    """The event stream (``/stream``) against the WebSocket and the long-poll, per server
    of ours that ran the stream scenarios (the reference servers have no stream)."""
    servers = run["servers"]
    lines: list[str] = []
    with_stream = [kind for kind, result in servers.items() if "stream" in result]
    if with_stream:
        lines += [
            "",
            "## Event stream (Server-Sent Events): one sender, N subscribers in one room",
            "",
            "The same burst to N event streams (`GET /stream`), and to N WebSockets: the "
            "broadcast scenario's (subscribers in the parent process) and the same through the "
            "stream's generator processes. CPU ratio: the stream's server CPU per delivery over "
            "that WebSocket figure; target ≤ 1.5x the broadcast scenario's. Same order: every "
            "subscriber the same ids, increasing. Msgs per batch: messages per fan-out; when the "
            "server falls behind it batches more, and each delivery costs less, so compare CPU "
            "figures at similar batch sizes.",
            "",
            "| server | transport | subscribers | msgs @ rate | delivered/expected | dup | out of order "
            "| same order | p50 / p99 ms | msgs per batch | server CPU µs/delivery | generator CPU "
            "| stream CPU ratio |",
            "| --- " * 13 + "|",
        ]
        for kind in with_stream:
            st = servers[kind]["stream"]
            rows = [
                ("stream", st["stream"], "-"),
                (
                    "WebSocket (broadcast scenario)",
                    st.get("websocket_broadcast"),
                    st.get("cpu_ratio_vs_broadcast", "-"),
                ),
                (
                    "WebSocket (stream's generators)",
                    st["websocket_same_generators"],
                    st["cpu_ratio_vs_same_generators"],
                ),
            ]
            for transport, e, ratio in rows:
                if e is None:
                    continue
                lat = e["latency_ms"]
                lines.append(
                    f"| {NAMES.get(kind, kind)} | {transport} | {st['subscribers']} "
                    f"| {st['messages']} @ {st['rate']:g}/s | {e['delivered']}/{e['expected']} "
                    f"| {e.get('duplicates', '-')} | {e.get('out_of_order', '-')} | {_same_order(e)} "
                    f"| {lat['p50']:.1f} / {lat['p99']:.1f} | {e.get('messages_per_batch') or '-'} "
                    f"| {e['server_cpu_us_per_delivery']} "
                    + (f"| {e['generator_cpu_share']:.0%} " if "generator_cpu_share" in e else "| - ")
                    + f"| {ratio} |"
                )
        lines.append("")
        for kind in with_stream:
            st = servers[kind]["stream"]
            basis = "broadcast scenario" if st["cpu_ratio_basis"] == "broadcast" else "stream's generators"
            lines.append(
                f"- {NAMES.get(kind, kind)}: stream CPU ratio {st['cpu_ratio']} (WebSocket of the {basis}), "
                f"target ≤ 1.5: {'met' if st['met'] else 'NOT met'}; every delivery arrived once, in "
                f"order: {_yes(st['complete'])}; stream reconnects {st['stream']['reconnects']} (server "
                f"recycled {st['stream']['server_stream']['recycled']}, dropped slow "
                f"{st['stream']['server_stream']['slow_dropped']}), error events {st['stream']['errors']}."
            )
    with_mixed = [kind for kind, result in servers.items() if "mixed_stream" in result]
    if with_mixed:
        lines += [
            "",
            "## Mixed rooms: WebSocket + event stream, WebSocket + long-poll",
            "",
            "Each room: N WebSockets and N clients of the other transport, one sender; both "
            "transports' clients in the same generator processes. Target: stream p99 ≤ 2x the "
            "WebSocket p99 of its room, nothing lost on either.",
            "",
            "| server | room | transport | clients | msgs @ rate | delivered/expected | dup | same order "
            "| p50 ms | p99 ms | p99 ÷ WebSocket p99 | msgs per batch | server CPU µs/delivery (room) |",
            "| --- " * 13 + "|",
        ]
        for kind in with_mixed:
            mixed = servers[kind]["mixed_stream"]
            for room_key, room_name, other in (
                ("websocket_stream", "WebSocket + stream", "stream"),
                ("websocket_longpoll", "WebSocket + long-poll", "longpoll"),
            ):
                room = mixed[room_key]
                for transport in ("websocket", other):
                    e = room["transports"][transport]
                    lines.append(
                        f"| {NAMES.get(kind, kind)} | {room_name} | {transport} | {e['clients']} "
                        f"| {mixed['messages']} @ {mixed['rate']:g}/s | {e['delivered']}/{e['expected']} "
                        f"| {e['duplicates']} | {_same_order(e)} | {e['latency_ms']['p50']:.1f} "
                        f"| {e['latency_ms']['p99']:.1f} "
                        f"| {room['p99_ratio'] if transport == other else '-'} "
                        f"| {room.get('messages_per_batch') or '-'} | {room['server_cpu_us_per_delivery']} |"
                    )
        lines.append("")
        for kind in with_mixed:
            mixed = servers[kind]["mixed_stream"]
            lines.append(
                f"- {NAMES.get(kind, kind)}: stream p99 ÷ WebSocket p99 "
                f"{mixed['websocket_stream']['p99_ratio']}, target ≤ 2; nothing lost on any transport: "
                f"{_yes(mixed['complete'])}; target {'met' if mixed['met'] else 'NOT met'}."
            )
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
