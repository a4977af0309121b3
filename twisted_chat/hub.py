"""The room core: one place for what every transport does with rooms.

A transport (WebSocket, long-poll) parses and frames; everything else happens here:
who the client is and whether it may connect, sending (session, rate limit, access, in
order per client), joining a room (access, cursor, catch-up merged with live events
without gap or overlap), leaving, and taking rights away from clients already connected.

The hub is the broker's only handler for a room, however many clients and transports
listen to it. Each client's state in a room is a ``Subscription`` that goes
LOADING -> CATCHING_UP -> LIVE and ends GONE; every callback checks that its subscription
is still the client's current one, so a quick unsubscribe or re-subscribe never leaves a
stale one behind.

Everything here runs on the reactor thread.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredSemaphore, fail, gatherResults, succeed
from twisted.python.failure import Failure

from .errors import ProtocolError, as_protocol_error, no_such_room, rate_limited, refused
from .events import EDITED, MESSAGE, SYSTEM, Author, ChatMessage, PresenceUpdate, RoomEvent, Typing
from .limits import ConnectionLease, SendRateLimiter
from .presence import PresenceTracker
from .sessions import SessionCache
from .storage.interfaces import Broker, MessageLog, RoomDirectory, RoomInfo, UnknownRoom

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Identity:
    """Who is on the other end, as their cookies say (addresses are the site's concern:
    ``limits.ConnectionGate``).

    ``browser_key`` is the CSRF cookie: it names the browser even when it has no session,
    so a login in another tab can find the pages that browser has open.
    """

    session_key: str | None = None
    browser_key: str | None = None
    author: Author | None = None


class ClientSink(Protocol):
    """What a transport does with what the hub tells one client."""

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        """The subscription exists; ``last`` is the room's newest id, ``present`` who is
        in the room (None without presence). Catch-up follows."""

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        """Events in order: catch-up first, then live ones, never a message twice."""

    def caught_up(self, room_id: int) -> None:
        """Everything up to now is delivered; what follows is live."""

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        """A subscribe did not succeed (no such room, storage down)."""

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        """The server ended a subscription: the room went away or became unreadable."""

    def session_ended(self) -> None:
        """The session changed (logout, login, deactivation): reconnect with the current
        cookie. The client has already left every room."""

    def disconnected(self, error: ProtocolError) -> None:
        """A moderator ended the connection: say why, and close. The client has already
        left every room."""

    def queued_bytes(self) -> int:
        """Bytes written but not yet taken by the network."""

    def drop_slow(self) -> None:
        """Too far behind: end the connection; the client resumes with ``since``."""


class SendLimiter(Protocol):
    """Sends per user: ``limits.SendRateLimiter``, or ``redis_limits.SharedSendRateLimiter``
    over every process (which answers later)."""

    def retry_after(self, key: Hashable) -> float | Deferred[float]: ...


class UserConnectionLimits(Protocol):
    """Open connections per user: ``limits.ConnectionLimits``, or over every process
    ``redis_limits.SharedConnectionLimits``; refusals are ProtocolError
    ``too_many_connections``."""

    def admit(self, user_id: int | None) -> ConnectionLease | Deferred[ConnectionLease]: ...


class SubscriptionState(enum.Enum):
    LOADING = "loading"
    CATCHING_UP = "catching up"
    LIVE = "live"
    GONE = "gone"


class Subscription:
    __slots__ = ("buffer", "client", "present", "room_id", "sent", "since", "state")

    def __init__(self, client: Client, room_id: int, since: int | None):
        self.client = client
        self.room_id = room_id
        self.since = since
        self.state = SubscriptionState.LOADING
        # The newest message id catch-up has handed to the client.
        self.sent = 0
        # Live events that arrive while catching up, delivered after the history.
        self.buffer: list[RoomEvent] = []
        # Whether the subscription counts its user as present in the room.
        self.present = False

    @property
    def current(self) -> bool:
        return self.state is not SubscriptionState.GONE


class Client:
    """One connection (a WebSocket, a parked poll) as the hub sees it."""

    __slots__ = (
        "_lease",
        "_sends",
        "closed",
        "hub",
        "identity",
        "linger",
        "resume_after",
        "sink",
        "subscriptions",
    )

    def __init__(
        self, hub: RoomHub, sink: ClientSink, identity: Identity, lease: ConnectionLease, linger: float
    ):
        self.hub = hub
        self.sink = sink
        self.identity = identity
        # How long its user stays present in a room after this connection leaves it.
        self.linger = linger
        self.subscriptions: dict[int, Subscription] = {}
        # Per room left, the newest id this connection was already sent: subscribing again
        # resumes after it instead of sending the history a second time.
        self.resume_after: dict[int, int] = {}
        self.closed = False
        self._lease = lease
        # The chain that keeps sends in order; most connections only read, so none yet.
        self._sends: Deferred[None] | None = None

    def subscribe(self, room_id: int, since: int | None) -> None:
        """Join a room; the sink hears ``subscribed`` or ``subscribe_failed``."""
        wait = self.hub.command_limiter.retry_after(self)
        if wait:
            self.sink.subscribe_failed(room_id, rate_limited(wait, what="commands", room=room_id))
        else:
            self.hub.join(self, room_id, since)

    def unsubscribe(self, room_id: int) -> None:
        """Leave a room; raises ProtocolError ``rate_limited``."""
        wait = self.hub.command_limiter.retry_after(self)
        if wait:
            raise rate_limited(wait, what="commands", room=room_id)
        subscription = self.subscriptions.get(room_id)
        if subscription is not None:
            self.hub.leave(subscription)

    def send(self, room_id: int, text: str, nonce: str) -> Deferred[int]:
        """Fires with the message id once committed."""
        return self._in_turn(lambda author, ack: self.hub.post(author, room_id, text, nonce, ack))

    def change(self, kind: str, room_id: int, message_id: int, text: str, nonce: str) -> Deferred[int]:
        """Edit or delete a message, in turn with the sends; fires with the change's id."""
        return self._in_turn(
            lambda author, ack: self.hub.change(author, kind, room_id, message_id, text, nonce, ack)
        )

    def typing(self, room_id: int) -> None:
        d = self.hub.authenticate(self.identity.session_key)
        d.addCallback(lambda author: self.hub.typing(author, room_id))
        d.addErrback(lambda failure: None)

    def _in_turn(self, write: Callable[[Author | None, Deferred[int]], Deferred[None]]) -> Deferred[int]:
        """Writes are accepted one after another, so a client's messages keep its order:
        the next is looked at only once the previous one has its id (or has failed). Each
        is checked against the session as it is then: a logout stops the next one."""
        ack: Deferred[int] = Deferred()

        def run(_: object) -> Deferred[None]:
            d = self.hub.sessions.author(self.identity.session_key).addCallback(write, ack)
            return d.addErrback(ack.errback)

        if self._sends is None:
            self._sends = succeed(None)
        self._sends.addCallback(run)
        return ack

    def paused(self) -> None:
        """The transport's buffer is full: the hub checks it on the next fan-out."""
        if not self.closed:
            self.hub.paused.add(self)

    def resumed(self) -> None:
        self.hub.paused.discard(self)

    def close(self) -> None:
        """The connection is gone: leave every room and give back its connection slot."""
        if self.closed:
            return
        self.closed = True
        for subscription in list(self.subscriptions.values()):
            self.hub.leave(subscription)
        self.hub.forget(self)
        self.hub.command_limiter.forget(self)
        self._lease.release()


class _Room:
    """The hub's clients in one room."""

    __slots__ = ("catching_up", "live", "newest", "ready", "subscribed")

    def __init__(self, ready: Deferred[None]):
        self.catching_up: set[Subscription] = set()
        # The newest message id published to the live subscriptions.
        self.newest = 0
        # Each live subscription's ``deliver``, looked up once: it is called per event batch
        # for every client in the room.
        self.live: dict[Subscription, Callable[[int, Sequence[RoomEvent]], None]] = {}
        self.subscribed = False
        self.ready = ready.addCallback(self._subscribed)

    def _subscribed(self, result: None) -> None:
        self.subscribed = True

    def __bool__(self) -> bool:
        return bool(self.catching_up or self.live)


class RoomHub:
    def __init__(
        self,
        directory: RoomDirectory,
        message_log: MessageLog,
        broker: Broker,
        sessions: SessionCache,
        send_limiter: SendLimiter,
        connection_limits: UserConnectionLimits,
        command_limiter: SendRateLimiter,
        *,
        max_rooms_per_client: int = 50,
        recent_count: int = 50,
        page_size: int = 500,
        max_backlog: int = 1024 * 1024,
        presence: PresenceTracker | None = None,
        edit_window: float = 900.0,
        clock: Callable[[], float] | None = None,
    ):
        self.directory = directory
        self.log = message_log
        self.broker = broker
        self.sessions = sessions
        self.send_limiter = send_limiter
        self.connection_limits = connection_limits
        # Subscribes and unsubscribes, per client: each may cost a query and a history.
        self.command_limiter = command_limiter
        self.max_rooms_per_client = max_rooms_per_client
        self.recent_count = recent_count
        self.page_size = page_size
        self.max_backlog = max_backlog
        self.presence = presence
        if presence is not None:
            presence.announce = self._presence_changed
        # How long an author may edit or delete their message (staff: always).
        self.edit_window = edit_window
        self._clock = clock or time.time
        # Typing notices, per user and room: at most one every 2 s is passed on.
        self._typing_limiter = SendRateLimiter(0.5, 1)
        # Tells the other processes of a typing notice (``notices``); none with one process.
        self.share_typing: Callable[[int, int, str], None] = lambda room_id, user_id, name: None
        self.paused: set[Client] = set()
        self.slow_consumers_dropped = 0
        self._rooms: dict[int, _Room] = {}
        self._by_session: dict[str, set[Client]] = {}
        self._by_browser: dict[str, set[Client]] = {}
        self._by_user: dict[int, set[Client]] = {}
        directory.watch(self.room_changed)

    # --- clients ------------------------------------------------------------------------

    def authenticate(self, session_key: str | None) -> Deferred[Author | None]:
        return self.sessions.author(session_key)

    def connect(self, sink: ClientSink, identity: Identity, linger: float = 0.0) -> Deferred[Client]:
        """Admit a connection; fails with ProtocolError ``too_many_connections``.

        With Redis the user's connections are counted over every process, so admission
        may wait for it. A transport whose client left meanwhile closes the Client it gets.
        ``linger``: how long its user stays present in a room after it leaves (a poll's
        client leaves after every poll).
        """
        author_id = identity.author.id if identity.author is not None else None
        try:
            lease = self.connection_limits.admit(author_id)
        except ProtocolError as error:
            return fail(error)
        if isinstance(lease, Deferred):
            return lease.addCallback(self._admitted, sink, identity, linger)
        return succeed(self._admitted(lease, sink, identity, linger))

    def _admitted(
        self, lease: ConnectionLease, sink: ClientSink, identity: Identity, linger: float
    ) -> Client:
        client = Client(self, sink, identity, lease, linger)
        for index, key in self._index_keys(client):
            index.setdefault(key, set()).add(client)
        return client

    def forget(self, client: Client) -> None:
        self.paused.discard(client)
        for index, key in self._index_keys(client):
            clients = index.get(key)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del index[key]

    def _index_keys(self, client: Client) -> list[tuple[dict[Any, set[Client]], Any]]:
        identity = client.identity
        keys: list[tuple[dict[Any, set[Client]], Any]] = []
        if identity.session_key:
            keys.append((self._by_session, identity.session_key))
        if identity.browser_key:
            keys.append((self._by_browser, identity.browser_key))
        if identity.author is not None:
            keys.append((self._by_user, identity.author.id))
        return keys

    @property
    def subscription_count(self) -> int:
        return sum(len(room.catching_up) + len(room.live) for room in self._rooms.values())

    # --- writing ------------------------------------------------------------------------

    def post(
        self, author: Author | None, room_id: int, text: str, nonce: str, ack: Deferred[int]
    ) -> Deferred[None]:
        """Send a message as ``author`` (already authenticated); ``ack`` gets its id or
        the refusal.

        Fires (with None) once the log has the message, or once it was refused: that is
        when the client's next write may be looked at.
        """

        def append(info: RoomInfo) -> None:
            self.log.append(room_id, author, text, nonce).chainDeferred(ack)

        return self._write(author, room_id, nonce, ack, append)

    def change(
        self,
        author: Author | None,
        kind: str,
        room_id: int,
        message_id: int,
        text: str,
        nonce: str,
        ack: Deferred[int],
    ) -> Deferred[None]:
        """Edit or delete a message, as ``post``. Authors may change their own messages
        within ``edit_window`` seconds; staff may delete any message and edit system ones."""

        def allowed(message: ChatMessage | None) -> None:
            assert author is not None
            refusal = self._may_change(author, kind, message)
            if refusal is not None:
                raise ProtocolError(*refusal, nonce=nonce or None, room=room_id)
            self.log.append(room_id, author, text, nonce, kind, message_id).chainDeferred(ack)

        def find(info: RoomInfo) -> Deferred[None]:
            return self.log.find(room_id, message_id).addCallback(allowed)

        return self._write(author, room_id, nonce, ack, find)

    def _may_change(self, author: Author, kind: str, message: ChatMessage | None) -> tuple[str, str] | None:
        if message is None:
            return ("no_such_message", "no such message")
        if author.is_staff and (kind != EDITED or message.kind == SYSTEM or message.user_id == author.id):
            return None
        if message.user_id != author.id or message.kind != MESSAGE:
            return ("not_allowed", "you can only change your own messages")
        if self._clock() * 1000 - message.ts > self.edit_window * 1000:
            minutes = max(1, round(self.edit_window / 60))
            return ("not_allowed", f"messages can only be changed for {minutes} minutes after sending")
        return None

    def _write(
        self,
        author: Author | None,
        room_id: int,
        nonce: str,
        ack: Deferred[int],
        write: Callable[[RoomInfo], Deferred[None] | None],
    ) -> Deferred[Any]:
        """The checks every write passes: logged in, under the rate limit, allowed in the room."""
        reply_nonce = nonce or None
        if author is None:
            ack.errback(Failure(ProtocolError("not_authenticated", "log in to post", reply_nonce)))
            return succeed(None)

        def in_room(wait: float) -> Deferred[Any]:
            if wait:
                ack.errback(Failure(rate_limited(wait, reply_nonce)))
                return succeed(None)
            d = self.directory.get(room_id).addCallback(self._allowed_in, author, room_id, reply_nonce)
            return d.addCallback(write).addErrback(ack.errback)

        wait = self.send_limiter.retry_after(author.id)
        if isinstance(wait, Deferred):  # counted over every process, in Redis
            return wait.addCallback(in_room)
        return in_room(wait)

    def _allowed_in(self, info: RoomInfo, author: Author | None, room_id: int, nonce: str | None) -> RoomInfo:
        refusal = info.refusal(author)
        if refusal is not None:
            raise refused(refusal, room_id, nonce)
        return info

    def post_system(self, room_id: int, text: str) -> Deferred[int]:
        """A message from the site itself (no author), e.g. a moderator's notice."""
        return self.log.append(room_id, None, text, kind=SYSTEM)

    def typing(self, author: Author | None, room_id: int) -> None:
        """Tell the room that ``author`` is typing; never stored, at most one per 2 s per
        user and room (the others are dropped: a client cannot tell them apart)."""
        if author is None or self._typing_limiter.retry_after((author.id, room_id)):
            return

        def tell(info: RoomInfo) -> None:
            if info.refusal(author) is None:
                self.share_typing(room_id, author.id, author.username)
                self.typing_elsewhere(room_id, author.id, author.username)

        self.directory.get(room_id).addCallbacks(tell, lambda failure: None)

    def typing_elsewhere(self, room_id: int, user_id: int, username: str) -> None:
        """A typing notice (from this process or another): to the room's live clients here,
        the typist's own excepted."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        event = [Typing(room_id, username, user_id)]
        for subscription, deliver in tuple(room.live.items()):
            author = subscription.client.identity.author
            if author is None or author.id != user_id:
                deliver(room_id, event)

    # --- joining and leaving ------------------------------------------------------------

    def join(self, client: Client, room_id: int, since: int | None) -> None:
        """Subscribe; a second subscribe to the same room starts that room over."""
        if client.closed:
            return
        old = client.subscriptions.get(room_id)
        if old is not None:
            self.leave(old)
        elif len(client.subscriptions) >= self.max_rooms_per_client:
            error = ProtocolError(
                "too_many_rooms", f"at most {self.max_rooms_per_client} rooms per connection", room=room_id
            )
            client.sink.subscribe_failed(room_id, error)
            return
        sent = client.resume_after.pop(room_id, None)
        if sent is not None:
            since = sent if since is None else max(since, sent)
        subscription = client.subscriptions[room_id] = Subscription(client, room_id, since)
        (
            self.directory.get(room_id)
            .addCallback(self._attach, subscription)
            .addCallback(self._catch_up, subscription)
            .addErrback(self._failed, subscription)
        )

    def _attach(self, info: RoomInfo, subscription: Subscription) -> Deferred[Any]:
        """If the client may read the room, start buffering its live events, then learn
        where the room is (None when the subscription is already gone)."""
        if not subscription.current:
            return succeed(None)
        author = subscription.client.identity.author
        room_id = subscription.room_id
        self._allowed_in(info, author, room_id, None)
        room = self._rooms.get(room_id)
        if room is None:
            followed = self.broker.subscribe(room_id, self._publish)
            if self.presence is not None:
                followed = gatherResults([followed, self.presence.follow(room_id)]).addCallback(
                    lambda _: None
                )
            room = self._rooms[room_id] = _Room(followed)
        room.catching_up.add(subscription)
        subscription.state = SubscriptionState.CATCHING_UP
        if self.presence is not None and author is not None:
            subscription.present = True
            # The first list of who is here names the subscriber: wait for it to be in.
            arrived = self.presence.arrive(room_id, author)
            if not arrived.called:
                return arrived.addCallback(lambda _: self._where(room, room_id))
        return self._where(room, room_id)

    def _where(self, room: _Room, room_id: int) -> Deferred[int]:
        """The room's last id, once the broker has the room: only events published after
        that reach a subscription's buffer, so the history is read after that."""
        if room.subscribed:
            return self.log.last_id(room_id)
        ready: Deferred[None] = Deferred()
        room.ready.addBoth(_pass_on, ready)
        return ready.addCallback(lambda _: self.log.last_id(room_id))

    def _catch_up(self, last: int | None, subscription: Subscription) -> Deferred[Any] | None:
        if last is None or not subscription.current:
            return None
        client, room_id = subscription.client, subscription.room_id
        present = None
        if self.presence is not None:
            # Who is here now; the changes already buffered are part of it.
            present = PresenceUpdate(room_id, users=self.presence.users(room_id))
            subscription.buffer = [e for e in subscription.buffer if not isinstance(e, PresenceUpdate)]
        client.sink.subscribed(room_id, last, present)
        if subscription.since is None:
            latest = self.log.read_latest(room_id, self.recent_count)
            return latest.addCallback(self._caught_up, subscription, 0)
        since = min(subscription.since, last)
        return self.log.read_after(room_id, since, self.page_size).addCallback(
            self._page, subscription, since
        )

    def _page(
        self, messages: list[ChatMessage], subscription: Subscription, cursor: int
    ) -> Deferred[Any] | None:
        if not subscription.current:
            return None
        if len(messages) < self.page_size:
            self._caught_up(messages, subscription, cursor)
            return None
        if self._drop_if_behind(subscription.client):
            return None
        cursor = subscription.sent = messages[-1].id
        subscription.client.sink.deliver(subscription.room_id, messages)
        more = self.log.read_after(subscription.room_id, cursor, self.page_size)
        return more.addCallback(self._page, subscription, cursor)

    def _caught_up(self, messages: list[ChatMessage], subscription: Subscription, cursor: int) -> None:
        """The last page, then what arrived meanwhile, then live."""
        if not subscription.current:
            return
        events: list[RoomEvent] = list(messages)
        if messages:
            cursor = messages[-1].id
        for event in subscription.buffer:
            if not isinstance(event, ChatMessage) or event.id > cursor:
                events.append(event)
                if isinstance(event, ChatMessage):
                    cursor = event.id
        subscription.buffer = []
        subscription.sent = cursor
        room = self._rooms[subscription.room_id]
        room.catching_up.discard(subscription)
        sink = subscription.client.sink
        room.live[subscription] = sink.deliver
        subscription.state = SubscriptionState.LIVE
        if events:
            if self._drop_if_behind(subscription.client):
                return
            sink.deliver(subscription.room_id, events)
        if subscription.current:
            sink.caught_up(subscription.room_id)

    def _failed(self, failure: Failure, subscription: Subscription) -> None:
        if not subscription.current:
            return
        self.leave(subscription)
        error = as_protocol_error(failure, room=subscription.room_id)
        subscription.client.sink.subscribe_failed(subscription.room_id, error)

    def leave(self, subscription: Subscription) -> None:
        if not subscription.current:
            return
        subscription.state = SubscriptionState.GONE
        client, room_id = subscription.client, subscription.room_id
        if client.subscriptions.get(room_id) is subscription:
            del client.subscriptions[room_id]
        room = self._rooms.get(room_id)
        if room is None:
            return
        if not client.closed:
            self._remember_sent(client, subscription, room)
        room.catching_up.discard(subscription)
        room.live.pop(subscription, None)
        if subscription.present and self.presence is not None:
            author = client.identity.author
            assert author is not None
            self.presence.depart(room_id, author, client.linger)
        if not room:
            del self._rooms[room_id]
            self.broker.unsubscribe(room_id, self._publish)
            if self.presence is not None:
                self.presence.unfollow(room_id)

    def _remember_sent(self, client: Client, subscription: Subscription, room: _Room) -> None:
        """Note how far this client got in a room it leaves, in case it subscribes again."""
        sent = subscription.sent
        if subscription in room.live:
            sent = max(sent, room.newest)
        if sent:
            client.resume_after[subscription.room_id] = sent
            if len(client.resume_after) > self.max_rooms_per_client:
                del client.resume_after[next(iter(client.resume_after))]

    # --- live events ----------------------------------------------------------------------

    def _publish(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        """The broker's handler: hand a room's events to every client in it."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        if self.paused:
            self._drop_slow_consumers()
        for event in reversed(events):
            if isinstance(event, ChatMessage):
                room.newest = event.id
                break
        for subscription in room.catching_up:
            subscription.buffer.extend(events)
        for deliver in tuple(room.live.values()):
            deliver(room_id, events)

    def _drop_slow_consumers(self) -> None:
        """Drop clients still too far behind when the next batch arrives.

        A batch is written in one reactor turn, so a healthy client may be briefly behind
        by a whole batch; one that has not drained by the next is slow. Memory per client
        stays under the limit plus one batch plus the socket buffer.
        """
        for client in [c for c in self.paused if c.sink.queued_bytes() > self.max_backlog]:
            self._drop_slow(client)

    def _drop_if_behind(self, client: Client) -> bool:
        """Before catch-up writes a page: a client that does not read gets no more than
        live clients may queue (the limit plus one page), whatever it asks for.

        Checked before, not after: the first page may find the connection's head (a
        WebSocket's 101, a stream's 200) still queued, and must not count against it."""
        if client in self.paused and client.sink.queued_bytes() > self.max_backlog:
            self._drop_slow(client)
            return True
        return False

    def _drop_slow(self, client: Client) -> None:
        self.paused.discard(client)
        self.slow_consumers_dropped += 1
        log.warning("dropping a slow consumer (%d bytes behind)", client.sink.queued_bytes())
        client.close()
        client.sink.drop_slow()

    def _presence_changed(self, room_id: int, joined: tuple[str, ...], left: tuple[str, ...]) -> None:
        self._publish(room_id, [PresenceUpdate(room_id, joined=joined, left=left)])

    # --- taking rights away ---------------------------------------------------------------

    def room_changed(self, room_id: int) -> None:
        """Re-check every client in a room that was edited, deleted or lost members."""
        if room_id not in self._rooms:
            return
        self.directory.get(room_id).addCallbacks(
            self._recheck_room, self._room_gone, callbackArgs=(room_id,), errbackArgs=(room_id,)
        )

    def _recheck_room(self, info: RoomInfo, room_id: int) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        for subscription in [*room.catching_up, *room.live]:
            refusal = info.refusal(subscription.client.identity.author)
            if refusal is not None:
                self._end(subscription, refused(refusal, room_id))

    def _room_gone(self, failure: Failure, room_id: int) -> None:
        if not failure.check(UnknownRoom):
            log.error("re-checking room %s failed: %s", room_id, failure.getErrorMessage())
            return
        room = self._rooms.get(room_id)
        if room is not None:
            for subscription in [*room.catching_up, *room.live]:
                self._end(subscription, no_such_room(room_id))

    def _end(self, subscription: Subscription, error: ProtocolError) -> None:
        self.leave(subscription)
        subscription.client.sink.subscription_ended(subscription.room_id, error)

    def disconnect_user(self, user_id: int, reason: str, room_id: int | None = None) -> None:
        """A moderator's order: end the user's subscriptions to a room, or (with no room)
        their connections, saying ``reason``."""
        for client in list(self._by_user.get(user_id, ())):
            if room_id is None:
                if not client.closed:
                    client.close()
                    client.sink.disconnected(ProtocolError("disconnected", reason))
            else:
                subscription = client.subscriptions.get(room_id)
                if subscription is not None:
                    self._end(subscription, ProtocolError("disconnected", reason, room=room_id))

    def session_ended(self, session_key: str | None = None, browser_key: str | None = None) -> None:
        """A browser logged out or in: its open connections start over with its new cookie."""
        clients: set[Client] = set()
        if session_key:
            self.sessions.forget(session_key)
            clients |= self._by_session.get(session_key, set())
        if browser_key:
            clients |= self._by_browser.get(browser_key, set())
        for client in clients:
            self._end_session(client)

    def room_ids(self) -> list[int]:
        """The rooms this process has clients in."""
        return list(self._rooms)

    def recheck_sessions(self) -> Deferred[None]:
        """Check every open session again (notices of logouts may have been missed), a few
        queries at a time."""
        limiter = DeferredSemaphore(4)
        checks = []
        for session_key, clients in list(self._by_session.items()):
            d = limiter.run(self.sessions.author, session_key)
            d.addCallback(self._recheck_session, list(clients))
            d.addErrback(lambda f: log.error("re-checking a session failed: %s", f.getErrorMessage()))
            checks.append(d)
        return gatherResults(checks).addCallback(lambda _: None)

    def _recheck_session(self, author: Author | None, clients: list[Client]) -> None:
        for client in clients:
            self._recheck_user(author, client)

    def user_changed(self, user_id: int) -> None:
        """A user was edited or deleted: clients whose session no longer names them start over."""
        self.sessions.forget_user(user_id)
        for client in list(self._by_user.get(user_id, ())):
            d = self.sessions.author(client.identity.session_key).addCallback(self._recheck_user, client)
            d.addErrback(
                lambda failure: log.error("re-checking a session failed: %s", failure.getErrorMessage())
            )

    def _recheck_user(self, author: Author | None, client: Client) -> None:
        if author != client.identity.author:
            self._end_session(client)

    def _end_session(self, client: Client) -> None:
        if client.closed:
            return
        client.close()
        client.sink.session_ended()


def _pass_on(result: Any, waiter: Deferred[None]) -> Any:
    """Fire ``waiter`` from a Deferred that several subscriptions share, leaving it as it was."""
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(None)
    return result
