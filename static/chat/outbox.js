// The outbox: the messages a person typed, in every room, in typed order, until the server
// has stored each one.
//
// One message is in flight at a time, so a message refused for now (rate limit, outage,
// lost connection) holds back every message typed after it, and the server's ids follow
// the typing order (the rate limit is the user's, over all rooms). A retry reuses the
// message's nonce, so the server stores it once. Unsent messages are kept in localStorage
// per user: they survive a reload, and are never sent under another user's name.

import { Backoff, Wait } from "./timing.js";

// 128 random bits in hex: unique per message, and made of characters a nonce may hold.
// (crypto.randomUUID would need a secure context.)
export function newNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// One user's unsent messages: `entries` in memory, mirrored to localStorage.
class StoredQueue {
  constructor(key) {
    this.key = key;
    this.entries = this.load();
  }

  load() {
    try {
      const stored = JSON.parse(localStorage.getItem(this.key));
      return Array.isArray(stored) ? stored : [];
    } catch {
      return [];
    }
  }

  push(entry) {
    this.entries.push(entry);
    this.save((stored) => [...stored, entry]);
  }

  remove(nonce) {
    this.entries = this.entries.filter((entry) => entry.nonce !== nonce);
    this.save((stored) => stored.filter((entry) => entry.nonce !== nonce));
  }

  // Applies a change to what is stored now, not to our copy: another tab may have added
  // its own messages since we read it.
  save(change) {
    try {
      const entries = change(this.load());
      if (entries.length) localStorage.setItem(this.key, JSON.stringify(entries));
      else localStorage.removeItem(this.key);
    } catch {
      // Storage is full or disabled: the message is still sent from memory; it just would
      // not survive a reload.
    }
  }
}

export class Outbox {
  // sender: { ready, send(entry) -> Promise of the stored id, rejected with a ChatError }
  // events: onQueued(entry), onSending(entry), onWaiting(entry, error), onAcked(entry, id),
  //         onFailed(entry, error), onSessionLost()
  // An entry is { nonce, room, text }.
  constructor(sender, events) {
    this.sender = sender;
    this.events = events;
    this.queue = null; // the current user's StoredQueue; null while anonymous
    this.held = false;
    this.draining = false;
    this.waiting = null; // the head's Wait: the person may cut it short (retryNow)
    this.wakeable = false; // and so may the connection coming back (wake)
    this.backoff = new Backoff();
    this.paceMs = 0;
  }

  // Switches to a user's stored messages (`key`), or to none while anonymous (null).
  useStorage(key) {
    this.queue = key === null ? null : new StoredQueue(key);
    for (const entry of this.queue?.entries ?? []) this.events.onQueued(entry);
    this.drain();
  }

  add(room, text) {
    this.enqueue({ nonce: newNonce(), room, text });
  }

  // A message refused for good, sent again as it was: with its nonce, so that the server
  // stores it once even if an earlier try did get through.
  retry(entry) {
    this.enqueue(entry);
  }

  enqueue(entry) {
    this.queue.push(entry);
    this.events.onQueued(entry);
    this.drain();
  }

  // The person asked to try the waiting message now.
  retryNow() {
    this.waiting?.wake();
  }

  // While held (the session is being checked) nothing new is sent.
  hold() {
    this.held = true;
  }

  resume() {
    this.held = false;
    this.wake();
  }

  // The connection is back: retry now rather than at the end of a backoff. A wait that the
  // server asked for (retry_after) is not cut short by this.
  wake() {
    if (this.wakeable) this.waiting?.wake();
    this.drain();
  }

  async drain() {
    if (this.draining) return;
    this.draining = true;
    while (this.queue?.entries.length && !this.held && this.sender.ready) {
      await this.sendHead(this.queue);
    }
    this.draining = false;
    if (!this.queue?.entries.length) this.paceMs = 0;
  }

  async sendHead(queue) {
    const entry = queue.entries[0];
    this.events.onSending(entry);
    let id;
    try {
      id = await this.sender.send(entry);
    } catch (error) {
      await this.refused(queue, entry, error);
      return;
    }
    queue.remove(entry.nonce);
    this.backoff.reset();
    this.events.onAcked(entry, id);
    if (this.paceMs && queue.entries.length) await this.pause(this.paceMs);
  }

  async refused(queue, entry, error) {
    this.events.onWaiting(entry, error);
    if (error.code === "not_authenticated") {
      // The session ended under us: keep the message for when this user is back.
      this.hold();
      this.events.onSessionLost();
      await this.pause(this.backoff.next());
    } else if (!error.retryable) {
      queue.remove(entry.nonce);
      this.events.onFailed(entry, error);
    } else if (error.retryAfter !== null) {
      // The server said how long to wait: the whole queue waits behind this message.
      if (error.code === "rate_limited") {
        // Also space out the messages after it, so that each finds a free token instead
        // of being refused once first. The spacing grows by each wait until it matches the
        // server's rate, and is forgotten once the queue is empty.
        this.paceMs += error.retryAfter * 1000;
      }
      await this.pause(error.retryAfter * 1000);
    } else {
      // A lost connection is retried as soon as it is back; other failures after backoff.
      await this.pause(this.backoff.next(), error.code === "connection_lost");
    }
  }

  async pause(ms, wakeable = false) {
    this.waiting = new Wait(ms);
    this.wakeable = wakeable;
    await this.waiting.done;
    this.waiting = null;
  }
}
