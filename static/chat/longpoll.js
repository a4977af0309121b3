// The chat over plain HTTP (docs/protocol.md): a loop of `GET /poll` receives, and one
// `POST /poll` per message sends.

import { ChatError, connectionLost } from "./errors.js";
import { Backoff, Wait } from "./timing.js";

const POLL_TIMEOUT_S = 25;
// A poll still unanswered this long after the server's own timeout is taken as lost.
const POLL_DEADLINE_MS = (POLL_TIMEOUT_S + 10) * 1000;
const POST_DEADLINE_MS = 30_000;

// Read at every send: logging in rotates the token.
function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// One request; network failures and deadlines become a retryable ChatError.
export async function requestJson(url, options) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...options });
  } catch {
    throw connectionLost();
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw ChatError.fromResponse(response, body);
  if (body === null) throw connectionLost(); // the answer was cut short
  return body;
}

// Polls the room from the last id seen, until stopped or refused for good.
export class PollLoop {
  constructor(link, path) {
    this.link = link;
    this.path = path;
    this.backoff = new Backoff();
    this.stopping = new AbortController();
    this.wait = null;
  }

  start() {
    this.run();
  }

  stop() {
    this.stopping.abort();
    this.wait?.wake();
  }

  get stopped() {
    return this.stopping.signal.aborted;
  }

  async run() {
    let cursor = this.link.lastId; // null: the first answer is the latest 50
    let connected = false;
    while (!this.stopped) {
      let answer;
      try {
        // Until a poll has been answered, one that answers at once says we are through.
        answer = await this.poll(cursor, connected ? POLL_TIMEOUT_S : 0);
      } catch (error) {
        if (this.stopped) return;
        if (error.code === "session_ended") {
          // Logged out or in elsewhere: poll again as whoever we are now.
          await this.link.sessionChanged();
          continue;
        }
        if (!error.retryable) {
          this.link.ended(error); // e.g. unknown_room
          return;
        }
        connected = false;
        this.link.disconnected();
        const delay = error.retryAfter === null ? this.backoff.next() : error.retryAfter * 1000;
        this.wait = new Wait(delay);
        await this.wait.done;
        continue;
      }
      // "Connected" is the first answer after a failure; every answer delivers data.
      if (!connected) {
        connected = true;
        this.backoff.reset();
        this.link.connected();
      }
      if (this.stopped) return; // replaced while this answer was on its way
      this.link.deliver(answer.messages);
      cursor = answer.last;
    }
  }

  poll(cursor, timeout) {
    const params = new URLSearchParams({ room: this.link.room, timeout });
    if (cursor !== null) params.set("since", cursor);
    const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(POLL_DEADLINE_MS)]);
    return requestJson(`${this.path}?${params}`, { signal });
  }
}

// Sends one message per POST; the answer carries the id it was stored under.
export class PostSender {
  constructor(room, path) {
    this.room = room;
    this.path = path;
  }

  // Each POST is a request of its own: there is no connection to wait for.
  get ready() {
    return true;
  }

  async send(entry) {
    const body = await requestJson(this.path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ room: this.room, text: entry.text, nonce: entry.nonce }),
      signal: AbortSignal.timeout(POST_DEADLINE_MS),
    });
    return body.id;
  }
}
