"""The chat server as a Twisted service: thread pools, storage, the room core, the site, the port.

Started by chatserver.tac. Stopping it (SIGTERM, or the reactor shutting down) is graceful:
stop accepting, tell WebSocket clients to come back (1001), answer parked polls, end
streams, write
every accepted message, wait for the WebSockets to close, then stop the threads.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
import sys
from collections.abc import Generator
from typing import Any, cast

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.urls import get_resolver
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IProtocolFactory

from . import django_signals, live
from .access import AccessLog
from .django_resource import DjangoResource
from .health import HealthResource
from .hub import RoomHub, SendLimiter, UserConnectionLimits
from .limits import ConnectionGate, ConnectionLimits, SendRateLimiter, raise_descriptor_limit
from .longpoll import LongPollResource
from .metrics import ChatMetrics, MetricsResource
from .notices import Notices
from .origins import OriginPolicy
from .presence import PresenceTracker
from .redis_limits import SharedConnectionLimits, SharedSendRateLimiter
from .sessions import SessionCache
from .site import build_ops_site, build_site
from .static import static_resource
from .storage import Storage
from .storage.directory import LocalRoomDirectory
from .storage.interfaces import Presence
from .storage.memory_broker import LocalBroker
from .storage.memory_presence import LocalPresence
from .storage.message_log import SqlMessageLog
from .storage.redis_connection import RedisConnection
from .storage.redis_feed import RedisMessageFeed
from .storage.redis_presence import RedisPresence
from .stream import StreamResource
from .threads import ThreadPoolService
from .websocket import ChatWebSocketFactory, ChatWebSocketResource
from .workers import AdoptedPortService

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096


class ChatServer(MultiService):
    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "127.0.0.1",
        listen_fd: int | None = None,
        worker: int = 0,
    ):
        """Listen on ``port``, or on the socket ``listen_fd`` a supervisor bound for all its
        workers (``workers``); ``worker`` numbers this process among them."""
        super().__init__()
        # The reactor gives up the GIL at every syscall; with Django or the ORM busy in
        # other threads, getting it back waits up to the switch interval (5 ms by default),
        # which stalls every connection. A shorter interval bounds that wait.
        sys.setswitchinterval(settings.CHAT_GIL_SWITCH_INTERVAL)
        self.reactor = reactor
        max_queue = settings.CHAT_MAX_THREAD_QUEUE
        self.wsgi_threads = ThreadPoolService(reactor, "django-wsgi", settings.CHAT_WSGI_THREADS, max_queue)
        self.password_threads = ThreadPoolService(
            reactor, "django-passwords", settings.CHAT_PASSWORD_THREADS, max_queue
        )
        self.db_threads = ThreadPoolService(reactor, "chat-db", settings.CHAT_DB_THREADS, max_queue)
        # The group commit batches whatever waits, so its queue stays short by itself.
        self.writer_threads = ThreadPoolService(reactor, "chat-writer", 1)
        for pool in self.thread_pools:
            pool.setServiceParent(self)

        self.metrics = ChatMetrics()
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.redis: RedisConnection | None = None
        feed: RedisMessageFeed | None = None
        if settings.CHAT_REDIS_URL:
            self.redis = RedisConnection(reactor, settings.CHAT_REDIS_URL, settings.CHAT_REDIS_TIMEOUT)
            feed = RedisMessageFeed(self.redis, self.process_id, settings.CHAT_HISTORY_WINDOW)
        # Per user, over every process when there are several.
        send_limiter: SendLimiter = SendRateLimiter(settings.CHAT_SEND_RATE, settings.CHAT_SEND_BURST)
        connection_limits: UserConnectionLimits = ConnectionLimits(settings.CHAT_MAX_CONNECTIONS_PER_USER)
        presence: Presence = LocalPresence()
        self.shared_connections: SharedConnectionLimits | None = None
        if self.redis is not None:
            commands, prefix = self.redis.commands, self.redis.prefix
            send_limiter = SharedSendRateLimiter(
                commands, settings.CHAT_SEND_RATE, settings.CHAT_SEND_BURST, reactor, prefix=prefix
            )
            connection_limits = self.shared_connections = SharedConnectionLimits(
                commands,
                settings.CHAT_MAX_CONNECTIONS_PER_USER,
                reactor,
                prefix=prefix,
                process_id=self.process_id,
            )
            presence = RedisPresence(commands, reactor, prefix=prefix)
        broker = LocalBroker()
        self.message_log = SqlMessageLog(
            reactor,
            self.db_threads.run,
            self.writer_threads.run,
            broker.publish,
            window=settings.CHAT_HISTORY_WINDOW,
            max_idle_rooms=settings.CHAT_MAX_IDLE_ROOMS,
            max_batch=settings.CHAT_MAX_BATCH,
            on_batch=self.metrics.batch_written,
            feed=feed,
        )
        self.storage = Storage(
            LocalRoomDirectory(
                self.db_threads.run, settings.CHAT_MAX_IDLE_ROOMS, settings.CHAT_UNKNOWN_ROOM_SECONDS
            ),
            self.message_log,
            broker,
            presence,
        )
        # A process's entries outlive it by half the grace period, and are re-read a sixth of
        # it apart: a dead process's users leave within the grace period.
        self.presence = PresenceTracker(
            reactor, self.storage.presence, self.process_id, ttl=settings.CHAT_PRESENCE_GRACE / 2
        )
        self.hub = RoomHub(
            self.storage.directory,
            self.storage.log,
            self.storage.broker,
            SessionCache(self.db_threads.run, ttl=settings.CHAT_SESSION_RECHECK_SECONDS),
            send_limiter,
            connection_limits,
            SendRateLimiter(settings.CHAT_COMMAND_RATE, settings.CHAT_COMMAND_BURST),
            max_rooms_per_client=settings.CHAT_MAX_ROOMS_PER_CONNECTION,
            recent_count=settings.CHAT_RECENT_COUNT,
            page_size=settings.CHAT_POLL_PAGE_SIZE,
            max_backlog=settings.CHAT_MAX_WS_BACKLOG_BYTES,
            presence=self.presence,
            edit_window=settings.CHAT_EDIT_WINDOW,
        )
        self.notices = Notices(
            self.hub, self.storage.directory, self.message_log, self.redis, self.process_id
        )
        django_signals.connect(reactor, self.notices)

        descriptors = raise_descriptor_limit()
        self.gate = ConnectionGate(
            settings.CHAT_MAX_CONNECTIONS_PER_IP,
            max(descriptors - settings.CHAT_FD_RESERVE, 1) if descriptors > 0 else 0,
        )
        log.info("open files limit %d: at most %d connections", descriptors, self.gate.total)
        origins = OriginPolicy(settings.CHAT_ALLOWED_ORIGINS)
        self.websockets = ChatWebSocketFactory(
            self.hub,
            AccessLog(),
            self.gate,
            max_message_size=settings.CHAT_MAX_WS_MESSAGE_BYTES,
            origins=origins,
            max_text_length=settings.CHAT_MAX_TEXT_LENGTH,
            ping_interval=settings.CHAT_WS_PING_INTERVAL,
            ping_timeout=settings.CHAT_WS_PING_TIMEOUT,
        )
        self.longpoll = LongPollResource(
            reactor,
            self.hub,
            self.db_threads.run,
            origins,
            jsonp=settings.CHAT_JSONP,
            max_text_length=settings.CHAT_MAX_TEXT_LENGTH,
            default_timeout=settings.CHAT_POLL_TIMEOUT,
            max_timeout=settings.CHAT_POLL_MAX_TIMEOUT,
            max_response_chars=settings.CHAT_MAX_POLL_RESPONSE_CHARS,
            grace=settings.CHAT_PRESENCE_GRACE,
        )
        self.streams = StreamResource(
            reactor,
            self.hub,
            origins,
            max_bytes=settings.CHAT_STREAM_MAX_BYTES,
            heartbeat=settings.CHAT_STREAM_HEARTBEAT,
            retry_ms=settings.CHAT_STREAM_RETRY_MS,
            linger=min(10, settings.CHAT_PRESENCE_GRACE),
        )
        self.site = build_site(
            DjangoResource(reactor, WSGIHandler(), self.wsgi_threads, self.password_threads),
            ChatWebSocketResource(self.websockets),
            self.longpoll,
            self.streams,
            static_resource(),
            HealthResource(reactor, self.db_threads.run),
            self.gate,
            _allowed_hosts(),
            max_body=settings.CHAT_MAX_REQUEST_BODY_BYTES,
            request_timeout=settings.CHAT_REQUEST_TIMEOUT,
            idle_timeout=settings.CHAT_IDLE_TIMEOUT,
        )
        self.metrics.watch(self)
        self.listener: Service
        if listen_fd is None:
            # Twisted's default backlog (50) drops SYNs in a burst of connections, each
            # then retried a second later; the kernel caps this at net.core.somaxconn.
            self.listener = strports.service(
                f"tcp:{port}:interface={interface}:backlog={LISTEN_BACKLOG}",
                cast(IProtocolFactory, self.site),
            )
        else:
            self.listener = AdoptedPortService(reactor, listen_fd, self.site)
        self.listener.setServiceParent(self)
        if settings.CHAT_OPS_PORT:
            # Operators only: counts and metrics tell an outsider when hidden rooms are busy.
            ops = build_ops_site(
                {
                    b"healthz": HealthResource(reactor, self.db_threads.run, self.stats),
                    b"metrics": MetricsResource(self.metrics),
                }
            )
            strports.service(
                f"tcp:{int(settings.CHAT_OPS_PORT) + worker}:interface={settings.CHAT_OPS_INTERFACE}",
                cast(IProtocolFactory, ops),
            ).setServiceParent(self)

    @property
    def thread_pools(self) -> tuple[ThreadPoolService, ...]:
        return (self.wsgi_threads, self.password_threads, self.db_threads, self.writer_threads)

    def stats(self) -> dict[str, Any]:
        redis = {} if self.redis is None else {"redis": "up" if self.redis.available else "down"}
        return {
            **redis,
            "connections": self.gate.open_count,
            "max_connections": self.gate.total,
            "websockets": len(self.websockets.connections),
            "subscriptions": self.hub.subscription_count,
            "parked_polls": self.longpoll.parked_count,
            "streams": len(self.streams.streams),
        }

    def startService(self) -> None:
        # What is loaded by now (Django, Twisted, the URLconf and admin) lives as long as
        # the process. Frozen, it is left out of the collector's full passes, which
        # otherwise stop the reactor for 50-100 ms once a few thousand connections have
        # come and gone; only objects that can die are walked.
        get_resolver().url_patterns  # noqa: B018 - imports every view module now
        gc.freeze()
        super().startService()
        self.presence.start()
        live.serve(self.reactor, self.notices, self.presence)
        if self.shared_connections is not None:
            self.shared_connections.start()

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        log.info("shutting down: closing connections and writing pending messages")
        yield self.listener.stopService()
        closed = self.websockets.going_away("server shutting down: reconnect and resume")
        self.longpoll.release_all()
        self.streams.release_all()
        self.presence.stop()
        yield self.message_log.close()
        if self.redis is not None:
            if self.shared_connections is not None:
                yield self.shared_connections.stop()
            yield self.redis.close()
        # Clients answer the close at once; autobahn drops any that do not within 1 s.
        yield closed.addTimeout(3, self.reactor).addErrback(lambda _: None)
        others = [s.stopService() for s in reversed(list(self)) if s is not self.listener and s.running]
        yield DeferredList([d for d in others if d is not None])
        self.running = 0
        log.info("shut down cleanly")


def _allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS`` as Django applies it: in DEBUG, empty means the local names."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)
