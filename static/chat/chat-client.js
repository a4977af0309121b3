// The chat client: receives a room's messages over the transport the selector picked
// (transports.js), and sends what the person types through the outbox. It tells the page
// what to show through `view`.
//
// Every transport delivers the same message objects (docs/protocol.md). The client keeps
// the last id it has shown, resumes from it after any loss or switch, and drops what it
// has already shown, so every message appears once, in id order.

import { ChatError } from "./errors.js";
import { Outbox } from "./outbox.js";
import { Backoff, Wait } from "./timing.js";
import { TransportSelector } from "./transports.js";

export class ChatClient {
  // transport: "auto" (the best that works), or "websocket", "stream" or "longpoll" only
  // paths: { ws, stream, poll, session }
  // view: onMessages(messages), onDeleted(id), onState(state), onTransport(name),
  //       onError(error), onIdentity(user), onQueued(entry), onSending(entry),
  //       onWaiting(entry, error), onSettled(nonce), onFailed(entry, error)
  constructor({ room, transport = "auto", user, paths, view }) {
    this.room = Number(room);
    this.user = user; // the username, or null when anonymous
    this.paths = paths;
    this.view = view;
    this.lastId = null; // the newest message shown
    this.awaitingEcho = new Map(); // id -> nonce: acknowledged, the message itself not here yet
    this.sessionChecks = 0;
    this.transports = new TransportSelector(this, paths, transport);
    this.outbox = new Outbox(this.transports.sender, {
      onQueued: (entry) => view.onQueued(entry),
      onSending: (entry) => view.onSending(entry),
      onWaiting: (entry, error) => view.onWaiting(entry, error),
      onFailed: (entry, error) => view.onFailed(entry, error),
      onAcked: (entry, id) => this.acknowledged(entry.nonce, id),
      onSessionLost: () => this.sessionChanged(),
    });
  }

  start() {
    this.view.onIdentity(this.user);
    this.outbox.useStorage(this.storageKey());
    this.transports.start();
  }

  send(text) {
    if (this.user === null) throw new ChatError("not_authenticated", "Log in to post.");
    this.outbox.add(text);
  }

  storageKey() {
    return this.user === null ? null : `chat-outbox:${this.room}:${this.user}`;
  }

  // --- told by the current transport ----------------------------------------------------

  // The transport is (re)established: not the same as data arriving.
  connected() {
    this.view.onState("connected");
    this.outbox.wake();
  }

  disconnected() {
    this.view.onState("reconnecting");
  }

  // The server ended or refused the subscription for good.
  ended(error) {
    this.transports.stop();
    this.view.onState("stopped");
    this.view.onError(error);
  }

  showError(error) {
    this.view.onError(error);
  }

  deliver(events) {
    const fresh = [];
    for (const event of events) {
      if (event.type === "deleted") {
        this.view.onDeleted(event.id);
        this.seen(event.id);
      } else if (event.type === "message" && (this.lastId === null || event.id > this.lastId)) {
        this.lastId = event.id;
        fresh.push(event);
      }
    }
    if (!fresh.length) return;
    this.view.onMessages(fresh);
    for (const message of fresh) this.seen(message.id);
  }

  // --- the pending copy of a sent message ---------------------------------------------------

  // The ack and the message itself come in either order; the pending copy goes when both
  // have come, so the message is never shown twice, nor missing in between.
  acknowledged(nonce, id) {
    if (this.lastId !== null && id <= this.lastId) this.view.onSettled(nonce);
    else this.awaitingEcho.set(id, nonce);
  }

  seen(id) {
    const nonce = this.awaitingEcho.get(id);
    if (nonce === undefined) return;
    this.awaitingEcho.delete(id);
    this.view.onSettled(nonce);
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
      this.view.onIdentity(user);
      this.outbox.useStorage(this.storageKey());
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
