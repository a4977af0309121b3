// The chat over plain HTTP (docs/protocol.md): a loop of `GET /poll` receives for every
// room the page carries, and one `POST /poll` per command sends.

import { ChatError } from "./errors.js";
import { postJson, requestJson } from "./http.js";
import { pollEntries, RoomQuery } from "./subscriptions.js";
import { Backoff, Wait } from "./timing.js";

const POLL_TIMEOUT_S = 25;
// A poll still unanswered this long after the server's own timeout is taken as lost.
const POLL_DEADLINE_MS = (POLL_TIMEOUT_S + 10) * 1000;
const POST_DEADLINE_MS = 30_000;

// Polls the page's rooms from their cursors, until stopped.
export class PollLoop {
  constructor(link, path) {
    this.link = link;
    this.path = path;
    this.query = new RoomQuery(link, path);
    this.backoff = new Backoff();
    this.stopping = new AbortController();
    this.request = null; // aborted by update(): the rooms changed, poll again for the new set
    this.asked = [];
    this.wait = null;
  }

  start() {
    this.run();
  }

  stop() {
    this.stopping.abort();
    this.wait?.wake();
  }

  // The set of rooms changed: a parked poll would not hear of a room it did not ask for.
  update() {
    if (sameRooms(this.query.cursors(), this.asked)) return;
    this.request?.abort();
    this.wait?.wake();
  }

  get stopped() {
    return this.stopping.signal.aborted;
  }

  async run() {
    let connected = false;
    while (!this.stopped) {
      const asked = (this.asked = this.query.cursors());
      if (!asked.length) {
        // Nothing to carry now: wait for update().
        this.wait = new Wait(POLL_DEADLINE_MS);
        await this.wait.done;
        continue;
      }
      const request = (this.request = new AbortController());
      let body;
      try {
        // Until a poll has been answered, one that answers at once says we are through.
        body = await this.poll(asked, connected ? POLL_TIMEOUT_S : 0, request.signal);
      } catch (error) {
        if (this.stopped) return;
        if (request.signal.aborted) continue; // update(): poll for the new set at once
        if (error.code === "session_ended") {
          // Logged out or in elsewhere: poll again as whoever we are now.
          await this.link.sessionChanged();
          continue;
        }
        if (!error.retryable) {
          if (await this.refused(error, asked)) continue;
          return;
        }
        connected = false;
        this.link.disconnected();
        await this.pause(error.retryAfter === null ? this.backoff.next() : error.retryAfter * 1000);
        continue;
      }
      if (this.stopped) return; // replaced while this answer was on its way
      if (!connected) {
        // "Connected" is the first answer after a failure; every answer delivers data.
        connected = true;
        this.backoff.reset();
        this.link.connected();
      }
      for (const entry of pollEntries(body)) {
        if (entry.error) {
          // This room cannot be read (any more); the others were answered all the same.
          const error = ChatError.fromWire(entry.error);
          if (!error.retryable) this.link.roomEnded(entry.room, error);
          continue;
        }
        this.link.deliver(entry.messages);
        // Who is there as the answer left, after the presence events in it.
        if (entry.presence) this.link.deliver([{ type: "presence", room: entry.room, users: entry.presence }]);
        this.link.reached(entry.room, entry.last);
      }
    }
  }

  async refused(error, asked) {
    try {
      return await this.query.refused(error, asked);
    } catch {
      // The server did not answer the questions: ask again later.
      this.link.disconnected();
      await this.pause(this.backoff.next());
      return true;
    }
  }

  async pause(ms) {
    this.wait = new Wait(ms);
    await this.wait.done;
  }

  poll(cursors, timeout, signal) {
    const all = AbortSignal.any([this.stopping.signal, signal, AbortSignal.timeout(POLL_DEADLINE_MS)]);
    return requestJson(this.query.url(this.path, cursors, { timeout }), { signal: all });
  }
}

function sameRooms(a, b) {
  const rooms = new Set(a.map(([room]) => room));
  return rooms.size === b.length && b.every(([room]) => rooms.has(room));
}

// Sends each command in a POST of its own; the answer carries the stored id (and, for an
// edit or a deletion, its place in the room).
export class PostSender {
  constructor(path) {
    this.path = path;
  }

  // Each POST is a request of its own: there is no connection to wait for.
  get ready() {
    return true;
  }

  // A message from the outbox: resolves to its id.
  async send(entry) {
    const { room, text, nonce } = entry;
    return (await postJson(this.path, { room, text, nonce }, POST_DEADLINE_MS)).id;
  }

  // An edit or a deletion: resolves to the acknowledgement, { room, id, seq }.
  command(fields) {
    return postJson(this.path, fields, POST_DEADLINE_MS);
  }

  // A notice that needs no answer (typing): lost ones do not matter.
  notify(fields) {
    postJson(this.path, fields, POST_DEADLINE_MS).catch(() => {});
  }
}
