// The chat over Server-Sent Events (docs/protocol.md): the browser's own EventSource on
// `GET /stream` receives for every room the page carries; commands are sent with
// `POST /poll` (longpoll.js PostSender).
//
// The page reconnects by itself, never the EventSource: a stream for several rooms carries
// no `id:` lines, so only the page knows where each room is. Every stream that ends or
// drops is closed and opened again with the current cursors in its URL. A refused stream
// (an HTTP error, which EventSource cannot read) is explained by a poll that asks the same
// question and gets the answer in JSON.

import { requestJson } from "./http.js";
import { ChatError } from "./errors.js";
import { RoomQuery } from "./subscriptions.js";
import { Backoff } from "./timing.js";

const CARRIED = new Set(["message", "edited", "deleted", "presence", "typing"]);

export class StreamSubscription {
  constructor(link, path, pollPath) {
    this.link = link;
    this.path = path;
    this.query = new RoomQuery(link, pollPath);
    this.backoff = new Backoff();
    this.source = null;
    this.asked = [];
    this.timer = null;
    this.established = false; // this stream said `subscribed`
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.close();
  }

  // The set of rooms changed: a stream carries the rooms in its URL, so open a new one.
  update() {
    if (this.stopped || this.source === null) return;
    const rooms = new Set(this.query.cursors().map(([room]) => room));
    if (rooms.size === this.asked.length && this.asked.every(([room]) => rooms.has(room))) return;
    this.close();
    this.open();
  }

  close() {
    this.source?.close();
    this.source = null;
  }

  open() {
    clearTimeout(this.timer);
    const asked = (this.asked = this.query.cursors());
    if (!asked.length) return; // nothing to carry: update() opens one when there is
    const source = new EventSource(this.query.url(this.path, asked));
    this.source = source;
    this.established = false;
    this.link.opening();
    source.addEventListener("message", (event) => {
      if (source === this.source) this.receive(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source === this.source && !this.stopped) this.errored(source);
    });
  }

  receive(event) {
    if (CARRIED.has(event.type)) {
      this.link.deliver([event]);
      return;
    }
    switch (event.type) {
      case "subscribed":
        this.established = true;
        this.backoff.reset();
        this.link.connected();
        this.link.subscribed(event.room, event.last);
        break;
      case "error":
        if (event.code === "session_ended") {
          this.reopenAs();
        } else if (event.code === "disconnected") {
          this.stop();
          this.link.ended(ChatError.fromWire(event));
        } else {
          this.link.showError(ChatError.fromWire(event));
        }
        break;
      case "unsubscribed":
        // The server ended one room's subscription (deleted, closed, banned): the next
        // stream leaves it out.
        this.link.roomEnded(event.room, new ChatError(event.code, event.message));
        break;
    }
  }

  // The browser logged out or in: reopen once the page knows who it is now (the browser
  // may store the new cookie a moment after the server's word).
  async reopenAs() {
    this.close();
    await this.link.sessionChanged();
    if (!this.stopped) this.open();
  }

  errored(source) {
    const wasEstablished = this.established;
    const refused = source.readyState === EventSource.CLOSED;
    this.close();
    if (refused) {
      this.diagnose(); // an HTTP error: ask why
      return;
    }
    // The stream ended or dropped. After a working stream that is routine (a recycled
    // stream, a restart): the next one has to prove itself in turn. A stream that never
    // worked has failed.
    if (!wasEstablished) this.link.failed();
    if (!this.stopped) this.timer = setTimeout(() => this.open(), this.backoff.next());
  }

  // Ask the same question over a poll that answers at once, to learn why.
  async diagnose() {
    const asked = this.asked;
    let delay = this.backoff.next();
    try {
      await requestJson(this.query.url(this.query.pollPath, asked, { timeout: 0 }), {
        signal: AbortSignal.timeout(10_000),
      });
      // The rooms are fine: the stream itself is what fails here. Perhaps only a stream for
      // several rooms, which a server may not offer yet: then one room, at once.
      if (this.query.askOneAtATime(asked)) delay = 0;
      else this.link.failed();
    } catch (error) {
      if (this.stopped) return;
      if (error.retryable) {
        this.link.showError(error);
        this.link.disconnected();
        if (error.retryAfter !== null) delay = error.retryAfter * 1000;
      } else if (!(await this.settle(error, asked))) {
        return;
      } else {
        delay = 0; // what was refused is left out now
      }
    }
    if (!this.stopped) this.timer = setTimeout(() => this.open(), delay);
  }

  async settle(error, asked) {
    try {
      return await this.query.refused(error, asked);
    } catch {
      return true; // the server did not answer the questions: try again after a while
    }
  }
}
