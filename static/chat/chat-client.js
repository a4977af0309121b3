// The chat client: follows every room the person may read over one connection (the
// transport the selector picked, transports.js), keeps what it learns of each room in a
// RoomState, and sends what the person does: messages through the outbox, edits,
// deletions and typing notices at once. It tells the page what changed through `view`.
//
// Every transport delivers the same events (docs/protocol.md). Each room resumes from its
// own cursor after any loss or switch, and its RoomState drops what it already has, so
// every message appears once, in id order.

import { ChatError } from "./errors.js";
import { requestJson } from "./http.js";
import { newNonce, Outbox } from "./outbox.js";
import { RoomState } from "./room-state.js";
import { Backoff, Wait } from "./timing.js";
import { TransportSelector } from "./transports.js";

// The server allows this many subscriptions per connection.
const MAX_ROOMS = 50;
const HISTORY_PAGE = 50;
// A typing notice shows this long unless it is repeated.
const TYPING_SHOWN_MS = 6000;
// Edits and deletions that fail for now are tried this many times in all.
const COMMAND_TRIES = 3;

export class ChatClient {
  // room: the room on screen; transport: "auto" (the best that works), or "websocket",
  // "stream" or "longpoll" only; paths: { ws, stream, poll, session, rooms, history }
  // (history has "{room}" in it); view: what RoomPage (room.js) implements.
  constructor({ room, transport = "auto", user, isStaff, paths, view }) {
    this.rooms = new Map(); // id -> RoomState, in the order the room list gives
    this.current = this.room(Number(room));
    this.user = user; // the username, or null when anonymous
    this.isStaff = isStaff;
    this.paths = paths;
    this.view = view;
    this.state = "connecting";
    this.pending = new Map(); // nonce -> { entry, state, error }: typed, not stored yet
    this.typingTimers = new Map(); // room id -> when the next typing notice lapses
    this.sessionChecks = 0;
    this.transports = new TransportSelector(this, paths, transport);
    this.outbox = new Outbox(this.transports.sender, {
      onQueued: (entry) => this.pendingChanged(entry, "queued"),
      onSending: (entry) => this.pendingChanged(entry, "sending"),
      onWaiting: (entry, error) => this.pendingChanged(entry, "waiting", error),
      onFailed: (entry, error) => this.pendingChanged(entry, "failed", error),
      onAcked: (entry, id) => this.acknowledged(entry, id),
      onSessionLost: () => this.sessionChanged(),
    });
  }

  room(id) {
    let room = this.rooms.get(id);
    if (!room) {
      room = new RoomState(id);
      this.rooms.set(id, room);
    }
    return room;
  }

  start() {
    this.view.onIdentity(this.user);
    this.outbox.useStorage(this.storageKey());
    this.transports.start();
    this.loadRooms();
  }

  storageKey() {
    return this.user === null ? null : `chat-outbox:${this.user}`;
  }

  // --- the rooms ------------------------------------------------------------------------

  // The rooms this user may read. Those not on screen are followed from their newest
  // message at this moment, so what comes from now on counts as unread.
  async loadRooms({ revive = false } = {}) {
    let listed;
    try {
      listed = (await requestJson(this.paths.rooms)).rooms;
    } catch {
      return; // the list stays as it was; the room on screen works without it
    }
    const known = new Map(this.rooms);
    this.rooms = new Map();
    for (const info of listed) {
      const room = known.get(info.id) ?? new RoomState(info.id);
      Object.assign(room, { name: info.name, description: info.description, isPrivate: info.is_private });
      if (room.cursor === null && room !== this.current) room.cursor = info.last_id;
      if (revive && room.ended) {
        room.ended = null; // listed again: readable, as whoever we are now
        this.view.onRoomAccess(room);
      }
      this.rooms.set(info.id, room);
    }
    // The room on screen stays, listed or not: it says itself why it cannot be read.
    this.rooms.set(this.current.id, this.current);
    this.view.onRooms();
    this.carry();
  }

  // [room, since] for each room to follow, the room on screen first.
  cursors() {
    const rooms = [this.current, ...this.rooms.values()].filter((room) => !room.ended);
    return [...new Set(rooms)].slice(0, MAX_ROOMS).map((room) => [room.id, room.cursor]);
  }

  // The set of rooms to follow may have changed: tell the receivers, and keep a
  // connection only while there is something to follow.
  carry() {
    const following = this.cursors().length > 0;
    if (following && !this.transports.running && this.state !== "disconnected") {
      this.transports.start();
    } else if (!following && this.transports.running) {
      this.transports.stop();
    } else {
      this.transports.roomsChanged();
    }
  }

  // Show another room, without a reload: it keeps following the others.
  open(id) {
    const room = this.room(id);
    if (room === this.current) return;
    this.current = room;
    const unread = room.unread;
    room.unread = 0;
    this.view.onRoomOpened(room, unread);
    this.view.onRooms();
    this.carry();
  }

  // --- told by the current transport ----------------------------------------------------

  // The transport is (re)established: not the same as data arriving.
  connected() {
    this.setState("connected");
    this.outbox.wake();
  }

  disconnected() {
    this.setState("reconnecting");
  }

  setState(state) {
    this.state = state;
    this.view.onState(state);
  }

  subscribed(id, last) {
    const room = this.rooms.get(id);
    if (!room) return;
    room.subscribed = true;
    if (last === 0) {
      // Nothing was ever said here.
      room.advance(0);
      room.history.more = false;
    }
    this.view.onSubscribed(room);
  }

  // A long-poll answer's cursor: everything up to it has been delivered.
  reached(id, last) {
    const room = this.rooms.get(id);
    if (!room) return;
    const first = !room.subscribed;
    room.advance(last);
    if (first) this.subscribed(id, last);
  }

  deliver(events) {
    const changes = new Map(); // room -> { added, updated, removed }
    const changesOf = (room) => {
      if (!changes.has(room)) changes.set(room, { added: [], updated: [], removed: [] });
      return changes.get(room);
    };
    for (const event of events) {
      const room = this.rooms.get(event.room);
      if (!room || room.ended) continue;
      switch (event.type) {
        case "message":
          this.received(room, event, changesOf(room));
          break;
        case "edited": {
          room.advance(event.seq);
          const message = room.edit(event);
          if (message) changesOf(room).updated.push(message);
          break;
        }
        case "deleted":
          room.advance(event.seq);
          if (room.remove(event)) changesOf(room).removed.push(event.id);
          break;
        case "presence":
          room.presence(event);
          this.view.onPresence(room);
          break;
        case "typing":
          this.typingSeen(room, event.user);
          break;
      }
    }
    for (const [room, change] of changes) this.view.onMessages(room, change);
    if ([...changes.keys()].some((room) => room !== this.current)) this.view.onRooms();
  }

  received(room, message, change) {
    room.advance(message.id);
    const result = room.put(message);
    if (result === "updated") change.updated.push(room.messages.get(message.id));
    if (result !== "added") return;
    change.added.push(room.messages.get(message.id));
    if (room !== this.current && !message.system && message.user !== this.user) room.unread += 1;
    if (room.typing.delete(message.user)) this.view.onTyping(room);
  }

  // The server ended or refused one room's subscription for good.
  roomEnded(id, error) {
    const room = this.rooms.get(id);
    if (!room || room.ended) return;
    room.ended = error;
    room.typing.clear();
    room.present.clear();
    this.view.onRoomAccess(room);
    this.view.onRooms();
    this.carry();
  }

  // A moderator ended this connection: say so, and come back only when asked to.
  connectionEnded(error) {
    this.transports.stop();
    this.setState("disconnected");
    this.view.onError(error);
  }

  reconnect() {
    this.view.onError(null);
    this.setState("connecting");
    this.transports.start();
  }

  showError(error) {
    this.view.onError(error);
  }

  // --- history --------------------------------------------------------------------------

  // The page before the oldest message the room shows (or its newest, when it shows none).
  async loadOlder(room) {
    const history = room.history;
    if (history.loading || history.more === false) return;
    history.loading = true;
    history.error = null;
    this.view.onHistory(room, []);
    const params = new URLSearchParams({ limit: HISTORY_PAGE });
    const oldest = room.oldestId();
    if (oldest !== null) params.set("before", oldest);
    let added = [];
    try {
      const body = await requestJson(`${this.paths.history.replace("{room}", room.id)}?${params}`);
      added = body.messages.filter((message) => room.put(message) === "added").map((m) => room.messages.get(m.id));
      history.more = body.more;
    } catch (error) {
      history.error = error;
    } finally {
      history.loading = false;
    }
    this.view.onHistory(room, added);
  }

  // --- sending ----------------------------------------------------------------------------

  send(roomId, text) {
    if (this.user === null) throw new ChatError("not_authenticated", "Log in to post.");
    this.outbox.add(roomId, text);
  }

  // Pending messages of a room, in typed order.
  pendingIn(room) {
    return [...this.pending.values()].filter((record) => record.entry.room === room.id);
  }

  pendingChanged(entry, state, error = null) {
    const record = { entry, state, error, at: Date.now() };
    this.pending.set(entry.nonce, record);
    this.view.onPending(this.room(entry.room), record);
  }

  retry(nonce) {
    const record = this.pending.get(nonce);
    if (!record) return;
    if (record.state === "failed") this.outbox.retry(record.entry);
    else this.outbox.retryNow();
  }

  discard(nonce) {
    const record = this.pending.get(nonce);
    if (record?.state !== "failed") return;
    this.pending.delete(nonce);
    this.view.onPendingGone(this.room(record.entry.room), nonce);
  }

  // Stored under `id`: shown as a message at once. The message itself, when it comes,
  // takes its place (with the server's time and text); it also moves the cursor, which an
  // ack must not: messages before it may still be on their way.
  acknowledged(entry, id) {
    const room = this.room(entry.room);
    this.pending.delete(entry.nonce);
    const provisional = { type: "message", room: room.id, id, ts: Date.now(), user: this.user, text: entry.text };
    const added = room.messages.has(id) ? null : room.put({ ...provisional, provisional: true });
    this.view.onPendingGone(room, entry.nonce);
    if (added) this.view.onMessages(room, { added: [room.messages.get(id)], updated: [], removed: [] });
    this.view.onSent(entry);
  }

  // --- edits, deletions, typing ------------------------------------------------------------

  async edit(room, id, text) {
    const ack = await this.command({ type: "edit", room: room.id, id, text, nonce: `e-${newNonce()}` });
    // Shown at once; the `edited` event, with the server's text and time, replaces it.
    const message = room.edit({ type: "edited", room: room.id, id, text, edited: Date.now(), seq: ack.seq });
    if (message) this.view.onMessages(room, { added: [], updated: [message], removed: [] });
  }

  async remove(room, id) {
    const ack = await this.command({ type: "delete", room: room.id, id, nonce: `d-${newNonce()}` });
    if (room.remove({ type: "deleted", room: room.id, id, seq: ack.seq })) {
      this.view.onMessages(room, { added: [], updated: [], removed: [id] });
    }
  }

  // Sends an edit or a deletion, again with the same nonce while the failure is one that
  // may pass (the server then does it once).
  async command(fields) {
    const backoff = new Backoff();
    for (let tries = 1; ; tries++) {
      try {
        return await this.transports.sender.command(fields);
      } catch (error) {
        if (!error.retryable || tries >= COMMAND_TRIES) throw error;
        await new Wait(error.retryAfter === null ? backoff.next() : error.retryAfter * 1000).done;
      }
    }
  }

  typing(room) {
    if (this.user !== null && !room.ended) this.transports.sender.notify({ type: "typing", room: room.id });
  }

  typingSeen(room, user) {
    if (user === this.user) return;
    room.typing.set(user, Date.now() + TYPING_SHOWN_MS);
    this.view.onTyping(room);
    this.expireTyping(room);
  }

  // One timer per room, for the notice that lapses first.
  expireTyping(room) {
    clearTimeout(this.typingTimers.get(room.id));
    const now = Date.now();
    for (const [user, until] of room.typing) if (until <= now) room.typing.delete(user);
    if (!room.typing.size) return;
    const next = Math.min(...room.typing.values());
    this.typingTimers.set(
      room.id,
      setTimeout(() => {
        this.expireTyping(room);
        this.view.onTyping(room);
      }, next - now),
    );
  }

  // --- who we are -------------------------------------------------------------------------

  // The session may have changed (a logout, or a login in another tab): ask who we are
  // now and carry on as that user. Nothing is sent until we know, so no message goes out
  // under the wrong name. Transports reconnect once this settles, with the cookie it saw.
  //
  // When the server said so (`told`), the cookie has changed, but the browser may store
  // the other tab's new cookie a moment after the server's word arrives here: while the
  // answer is still the old user, ask again a few times.
  async sessionChanged({ told = false } = {}) {
    const check = ++this.sessionChecks;
    this.outbox.hold();
    let user = await this.whoAmI();
    for (let delay = 100; told && user === this.user && delay <= 1600; delay *= 2) {
      await new Wait(delay).done;
      user = await this.whoAmI();
    }
    if (check !== this.sessionChecks) return; // a newer check decides
    if (user !== this.user) {
      this.user = user;
      this.isStaff = false; // the page knew it of its first user only; the server decides
      for (const { entry } of this.pending.values()) this.view.onPendingGone(this.room(entry.room), entry.nonce);
      this.pending.clear();
      this.view.onIdentity(user);
      this.outbox.useStorage(this.storageKey());
      this.loadRooms({ revive: true }); // another user may read other rooms
    }
    this.outbox.resume();
  }

  async whoAmI() {
    const backoff = new Backoff();
    for (;;) {
      try {
        const response = await fetch(this.paths.session, { cache: "no-store" });
        if (response.ok) return (await response.json()).user;
      } catch {
        // The server is away: ask again below.
      }
      await new Wait(backoff.next()).done;
    }
  }
}
