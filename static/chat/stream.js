// The chat over Server-Sent Events (docs/protocol.md): the browser's own EventSource on
// `GET /stream` receives; messages are sent with `POST /poll` (longpoll.js PostSender).
//
// EventSource reconnects by itself when a stream ends (the server ends each one after a
// bounded number of bytes, and on shutdown) and resumes with Last-Event-ID, so most
// reconnects need nothing from us. It gives up only when the server answers with an
// error status; the event stream cannot say which, so a quick poll asks the same question
// and gets the answer in JSON.

import { ChatError } from "./errors.js";
import { requestJson } from "./longpoll.js";
import { Backoff } from "./timing.js";

export class StreamSubscription {
  constructor(link, path, pollPath) {
    this.link = link;
    this.path = path;
    this.pollPath = pollPath;
    this.backoff = new Backoff();
    this.source = null;
    this.timer = null;
    this.established = false; // this connection said `subscribed`
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  open() {
    const params = new URLSearchParams({ room: this.link.room });
    if (this.link.lastId !== null) params.set("since", this.link.lastId);
    const source = new EventSource(`${this.path}?${params}`);
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
    switch (event.type) {
      case "subscribed":
        this.established = true;
        this.backoff.reset();
        this.link.connected();
        break;
      case "message":
      case "deleted":
        this.link.deliver([event]);
        break;
      case "error":
        if (event.code === "session_ended") this.reopenAs();
        else this.link.showError(ChatError.fromWire(event));
        break;
      case "unsubscribed":
        // The room was deleted or is no longer readable by us.
        this.stop();
        this.link.ended(new ChatError(event.code, event.message));
        break;
    }
  }

  // The browser logged out or in. EventSource would come back at once, perhaps before
  // the browser has stored the new cookie: reopen once the client knows who it is now.
  async reopenAs() {
    this.source.close();
    this.source = null;
    await this.link.sessionChanged();
    if (!this.stopped) this.open();
  }

  errored(source) {
    const wasEstablished = this.established;
    this.established = false;
    if (source.readyState === EventSource.CONNECTING) {
      // The stream ended or dropped and the browser is already reconnecting. After a
      // working stream that is routine (a recycled stream, a restart); a stream that
      // never worked has failed.
      if (wasEstablished) this.link.opening();
      else this.link.failed();
      return;
    }
    // Refused with an HTTP error: the browser will not retry.
    source.close();
    this.source = null;
    this.diagnose();
  }

  // Ask the same question over a poll that answers at once, to learn why.
  async diagnose() {
    const params = new URLSearchParams({ room: this.link.room, timeout: 0 });
    if (this.link.lastId !== null) params.set("since", this.link.lastId);
    let delay;
    try {
      await requestJson(`${this.pollPath}?${params}`, { signal: AbortSignal.timeout(10_000) });
      // The room is fine: the stream itself is what fails here.
      this.link.failed();
      delay = this.backoff.next();
    } catch (error) {
      if (this.stopped) return;
      if (!error.retryable) {
        this.stop();
        this.link.ended(error);
        return;
      }
      this.link.showError(error);
      this.link.disconnected();
      delay = error.retryAfter === null ? this.backoff.next() : error.retryAfter * 1000;
    }
    if (!this.stopped) this.timer = setTimeout(() => this.open(), delay);
  }
}
