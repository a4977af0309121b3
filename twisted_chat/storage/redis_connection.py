"""One process's link to Redis: a command connection and one subscription connection.

txredisapi reconnects both by itself (with backoff), but a new subscription connection
starts with no channels: this one keeps the set of channels it listens to and subscribes
them again on every connection, then tells its listeners that anything published while it
was down was missed. Commands never wait longer than ``timeout``; a ping on the
subscription connection notices a Redis that froze without closing the socket.

Outages are logged twice, when they start and when they end, and counted for /metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

log = logging.getLogger(__name__)

ChannelHandler = Callable[[str], None]


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def connectionMade(self) -> Deferred[None]:
        d: Deferred[None] = super().connectionMade()
        self.whenConnected().addCallback(self.factory.link._subscriber_ready)
        return d

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.link._subscriber_lost(self, why)

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.link._message(channel, message)


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _SubscriberProtocol
    initialDelay = 0.5
    maxDelay = 5

    def __init__(self, link: RedisConnection):
        super().__init__(isLazy=True)
        self.link = link


def key_prefix(db: int) -> str:
    """Channels are not per database in Redis: the prefix keeps two deployments sharing
    one server (or two test runs) apart."""
    return f"chat:{db}:"


class RedisConnection:
    def __init__(self, reactor: Any, url: str, timeout: float = 2.0, ping_interval: float = 5.0):
        parsed = urlparse(url)
        if parsed.scheme != "redis":
            raise ValueError(f"CHAT_REDIS_URL must look like redis://host:port/db, not {url!r}")
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        db = int(parsed.path.strip("/") or 0)
        self.reactor = reactor
        self.timeout = timeout
        self.prefix = key_prefix(db)
        self.commands = txredisapi.lazyConnection(
            host,
            port,
            dbid=db,
            password=parsed.password,
            convertNumbers=False,
            connectTimeout=timeout,
            replyTimeout=timeout,
        )
        factory = self.commands._factory
        factory.initialDelay, factory.maxDelay = _SubscriberFactory.initialDelay, _SubscriberFactory.maxDelay
        self._subscriber_factory = _SubscriberFactory(self)
        self._subscriber_factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=timeout))
        self._subscriber: _SubscriberProtocol | None = None
        self._channels: dict[str, ChannelHandler] = {}
        self._subscribed: set[str] = set()
        self._waiting: dict[str, list[Deferred[None]]] = {}
        self._reconnected: list[Callable[[], None]] = []
        self._ping = LoopingCall(self._check_alive)
        self._ping.clock = reactor
        self._ping.start(ping_interval, now=False)
        self.available = False
        self.outages = 0
        self._down_since: float | None = time.monotonic()
        self._closing = False

    # --- subscriptions --------------------------------------------------------------------

    def listen(self, channel: str, handler: ChannelHandler) -> Deferred[None]:
        """Hand every message on ``channel`` to ``handler``; fires once subscribed (at once
        while Redis is down: the channel is subscribed when it is back)."""
        self._channels[channel] = handler
        if channel in self._subscribed or self._subscriber is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        waiters = self._waiting.setdefault(channel, [])
        waiters.append(waiter)
        if len(waiters) == 1:
            self._subscribe(self._subscriber, channel)
        return waiter

    def unlisten(self, channel: str) -> None:
        if self._channels.pop(channel, None) is None:
            return
        self._subscribed.discard(channel)
        subscriber = self._subscriber
        if subscriber is not None and channel not in self._waiting:
            subscriber.unsubscribe(channel).addErrback(lambda _: None)

    def on_reconnected(self, listener: Callable[[], None]) -> None:
        self._reconnected.append(listener)

    def _subscribe(self, subscriber: _SubscriberProtocol, channel: str) -> None:
        # One channel per SUBSCRIBE: Redis confirms each command once, so each Deferred
        # fires for its own channel.
        d = subscriber.subscribe(channel)
        d.addCallbacks(self._confirmed, self._unconfirmed, callbackArgs=(subscriber, channel))

    def _confirmed(self, reply: Any, subscriber: _SubscriberProtocol, channel: str) -> None:
        if subscriber is not self._subscriber:
            return
        if channel not in self._channels:
            subscriber.unsubscribe(channel).addErrback(lambda _: None)
        else:
            self._subscribed.add(channel)
        for waiter in self._waiting.pop(channel, []):
            waiter.callback(None)

    def _unconfirmed(self, failure: Failure) -> None:
        # The connection went away; the next one subscribes every channel again.
        return None

    def _subscriber_ready(self, subscriber: _SubscriberProtocol) -> None:
        self._subscriber = subscriber
        self._subscribed.clear()
        for channel in list(self._channels):
            self._waiting.setdefault(channel, [])
            self._subscribe(subscriber, channel)
        self.available = True
        if self._down_since is not None:
            if self.outages:
                log.warning("Redis is back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        for listener in self._reconnected:
            try:
                listener()
            except Exception:
                log.exception("a Redis reconnection listener failed")

    def _subscriber_lost(self, subscriber: _SubscriberProtocol, why: Failure) -> None:
        if subscriber is not self._subscriber:
            return
        self._subscriber = None
        self._subscribed.clear()
        # Nobody waits for a subscription that cannot happen: they hear at once, and the
        # reconnection's catch-up covers what they miss.
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for waiter in waiters:
                waiter.callback(None)
        self.available = False
        if self._closing:
            return
        self.outages += 1
        self._down_since = time.monotonic()
        log.error(
            "Redis connection lost (%s): messages reach other processes through the database "
            "until it is back",
            why.getErrorMessage(),
        )

    def _message(self, channel: str, message: str) -> None:
        handler = self._channels.get(channel)
        if handler is None:
            return
        try:
            handler(message)
        except Exception:
            log.exception("handling a message on %s failed", channel)

    def _check_alive(self) -> None:
        subscriber = self._subscriber
        if subscriber is None:
            return
        d = subscriber.ping().addTimeout(self.timeout, self.reactor)
        d.addErrback(lambda _: subscriber.transport.abortConnection() if subscriber.transport else None)

    # --- commands -------------------------------------------------------------------------

    @property
    def commands_ready(self) -> bool:
        return bool(self.commands._factory.size)

    def run(self, command: Callable[..., Deferred[Any]], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run a command of the command connection, bounded by ``timeout``; fail at once
        while that connection is down (txredisapi would wait for it, for ever)."""
        if not self.commands_ready:
            return fail(ConnectionError("Redis is not connected"))
        return command(*args, **kwargs).addTimeout(self.timeout, self.reactor)

    def close(self) -> Deferred[Any]:
        self._closing = True
        if self._ping.running:
            self._ping.stop()
        self._subscriber_factory.disconnect().addErrback(lambda _: None)
        return self.commands.disconnect().addErrback(lambda _: None)
