"""``/metrics`` in Prometheus text format.

The hot paths only bump plain integers; this collector reads them (and the live counts of
connections, subscriptions, parked polls and queued thread jobs) when scraped. Only the
histograms are observed as things happen, once per database batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request


class ChatMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram(
            "chat_db_batch_size",
            "Messages written per group-commit transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "chat_db_commit_seconds",
            "Time to write one group-commit batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.fanout_latency_seconds = Histogram(
            "chat_fanout_latency_seconds",
            "From a message's acceptance to its fan-out to every listener (includes the commit).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )

    def watch(self, server: Any) -> None:
        self.registry.register(_ServerCollector(server))

    def batch_written(self, size: int, commit_seconds: float, fanout_seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(commit_seconds)
        self.fanout_latency_seconds.observe(fanout_seconds)


class _ServerCollector(Collector):
    def __init__(self, server: Any):
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        ws, poll, hub, message_log = server.websockets, server.longpoll, server.hub, server.message_log
        streams = server.streams
        yield _gauge("chat_websocket_connections", "Open WebSocket connections.", len(ws.connections))
        yield _gauge("chat_stream_connections", "Open event streams (GET /stream).", len(streams.streams))
        yield _gauge(
            "chat_subscriptions", "Room subscriptions, over every transport.", hub.subscription_count
        )
        yield _gauge("chat_longpoll_parked", "Long-poll requests waiting for a message.", poll.parked_count)
        yield _counter("chat_messages_accepted", "Messages accepted for writing.", message_log.accepted)
        yield _counter("chat_messages_published", "Messages written and fanned out.", message_log.committed)
        deliveries = CounterMetricFamily(
            "chat_deliveries", "Messages delivered to one client.", labels=["transport"]
        )
        deliveries.add_metric(["websocket"], ws.delivered)
        deliveries.add_metric(["longpoll"], poll.delivered)
        deliveries.add_metric(["stream"], streams.delivered)
        yield deliveries
        slow = CounterMetricFamily(
            "chat_slow_consumer_disconnects",
            "Connections dropped for falling too far behind.",
            labels=["transport"],
        )
        slow.add_metric(["websocket"], ws.slow_dropped)
        slow.add_metric(["stream"], streams.slow_dropped)
        yield slow
        yield _counter(
            "chat_stream_recycled",
            "Streams ended after CHAT_STREAM_MAX_BYTES, for the client to resume on a new one.",
            streams.recycled,
        )
        yield _gauge(
            "chat_db_pending_writes", "Messages waiting for the next batch.", message_log.writer.pending
        )
        queue = GaugeMetricFamily(
            "chat_threadpool_queue_depth", "Jobs waiting for a thread.", labels=["pool"]
        )
        refused = CounterMetricFamily(
            "chat_threadpool_refused", "Jobs refused because the queue was full.", labels=["pool"]
        )
        for pool in server.thread_pools:
            queue.add_metric([pool.name], pool.queue_depth)
            refused.add_metric([pool.name], pool.refused)
        yield queue
        yield refused
        yield _gauge("chat_connections", "Open TCP connections on the public port.", server.gate.open_count)
        yield _counter(
            "chat_connections_refused",
            "Connections refused: the address's limit, or the descriptor reserve.",
            server.gate.refused,
        )
        yield _counter(
            "chat_messages_filled",
            "Messages read from the database because no other process's publish brought them.",
            message_log.filled,
        )
        redis = server.redis
        if redis is not None:
            yield _gauge("chat_redis_up", "1 while the Redis subscription connection is up.", redis.available)
            yield _counter("chat_redis_outages", "Times the Redis connection was lost.", redis.outages)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: ChatMetrics):
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._metrics.registry)
