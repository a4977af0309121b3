// The chat client: one interface, two transports (WebSocket and long-poll).
//
// Both transports deliver the same message objects (see docs/protocol.md). The client
// keeps the last id it saw, resumes from it after any loss with backoff, drops anything
// it has already seen, and retries unacknowledged sends with their original nonce, so a
// retry never duplicates a message.

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 15000;

export class ChatError extends Error {
  constructor(code, message, retryAfter = null) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function newNonce() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// Errors that a retry cannot fix: tell the user instead of retrying.
const FINAL_ERRORS = new Set([
  "bad_request", "too_large", "not_authenticated", "forbidden", "unknown_room", "csrf_failed",
]);

export class WebSocketTransport {
  constructor(client, path) {
    this.client = client;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = `${scheme}//${location.host}${path}`;
    this.socket = null;
  }

  // Resolves when the connection closes; rejects if it never opened.
  run(since) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      this.socket = socket;
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        const frame = { type: "subscribe", room: this.client.room };
        if (since !== null) frame.since = since;
        socket.send(JSON.stringify(frame));
      });
      socket.addEventListener("message", (event) => this.receive(JSON.parse(event.data)));
      socket.addEventListener("close", () => {
        this.socket = null;
        opened ? resolve() : reject(new Error("WebSocket did not open"));
      });
    });
  }

  receive(frame) {
    switch (frame.type) {
      case "subscribed":
        this.client.connected();
        break;
      case "message":
      case "deleted":
        this.client.deliver([frame]);
        break;
      case "ack":
        this.client.acknowledged(frame.nonce, frame.id);
        break;
      case "error":
        this.client.refused(frame.nonce, new ChatError(frame.code, frame.message, frame.retry_after));
        break;
    }
  }

  get ready() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(text, nonce) {
    if (!this.ready) return false;
    this.socket.send(JSON.stringify({ type: "send", room: this.client.room, text, nonce }));
    return true;
  }

  stop() {
    this.socket?.close();
  }
}

export class LongPollTransport {
  constructor(client, path) {
    this.client = client;
    this.path = path;
    this.stopped = false;
    this.controller = null;
  }

  // Polls until a request fails; then the client backs off and calls run() again.
  async run(since) {
    let cursor = since;
    while (!this.stopped) {
      const params = new URLSearchParams({ room: this.client.room, timeout: "25" });
      if (cursor !== null) params.set("since", cursor);
      this.controller = new AbortController();
      const response = await fetch(`${this.path}?${params}`, {
        credentials: "same-origin",
        cache: "no-store",
        signal: this.controller.signal,
      });
      if (!response.ok) throw new Error(`poll answered ${response.status}`);
      const body = await response.json();
      this.client.connected();
      this.client.deliver(body.messages);
      cursor = Math.max(body.last, this.client.lastId ?? 0);
    }
  }

  get ready() {
    return true;
  }

  send(text, nonce) {
    fetch(this.path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ room: this.client.room, text, nonce }),
    })
      .then(async (response) => {
        const body = await response.json().catch(() => ({}));
        if (response.ok) {
          this.client.acknowledged(nonce, body.id);
        } else {
          const error = body.error ?? { code: "unavailable", message: `server answered ${response.status}` };
          const retryAfter = Number(response.headers.get("Retry-After")) || null;
          this.client.refused(nonce, new ChatError(error.code, error.message, retryAfter));
        }
      })
      .catch(() => this.client.refused(nonce, new ChatError("unavailable", "network error")));
    return true;
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }
}

export class ChatClient {
  // handlers: onMessages(list), onDeleted(id), onState(state), onError(ChatError)
  constructor({ room, transport, wsPath = "/ws", pollPath = "/poll", handlers }) {
    this.room = Number(room);
    this.handlers = handlers;
    this.lastId = null;
    this.pending = new Map(); // nonce -> {text, resolve, reject}
    this.backoff = MIN_BACKOFF_MS;
    this.running = false;
    this.transport = transport === "longpoll"
      ? new LongPollTransport(this, pollPath)
      : new WebSocketTransport(this, wsPath);
  }

  async start() {
    this.running = true;
    this.setState("connecting");
    while (this.running) {
      try {
        await this.transport.run(this.lastId);
      } catch {
        // A failed connect or poll: fall through to the backoff below.
      }
      if (!this.running) break;
      this.setState("reconnecting");
      const delay = this.backoff * (0.5 + Math.random() / 2);
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  stop() {
    this.running = false;
    this.transport.stop();
    this.setState("offline");
  }

  connected() {
    this.backoff = MIN_BACKOFF_MS;
    this.setState("connected");
    for (const [nonce, entry] of this.pending) this.transport.send(entry.text, nonce);
  }

  setState(state) {
    this.handlers.onState?.(state);
  }

  deliver(events) {
    const fresh = [];
    for (const event of events) {
      if (event.type === "deleted") {
        this.handlers.onDeleted?.(event.id);
      } else if (event.type === "message" && (this.lastId === null || event.id > this.lastId)) {
        this.lastId = event.id;
        fresh.push(event);
      }
    }
    if (fresh.length) this.handlers.onMessages?.(fresh);
  }

  // Resolves with the message id once the server has stored it.
  send(text) {
    const nonce = newNonce();
    return new Promise((resolve, reject) => {
      this.pending.set(nonce, { text, resolve, reject });
      this.transport.send(text, nonce); // if not ready, connected() sends it later
    });
  }

  acknowledged(nonce, id) {
    const entry = this.pending.get(nonce);
    if (!entry) return;
    this.pending.delete(nonce);
    entry.resolve(id);
  }

  refused(nonce, error) {
    const entry = nonce ? this.pending.get(nonce) : null;
    if (!entry) {
      this.handlers.onError?.(error);
      return;
    }
    if (FINAL_ERRORS.has(error.code)) {
      this.pending.delete(nonce);
      entry.reject(error);
      return;
    }
    // Rate limits and outages: retry with the same nonce, so nothing is stored twice.
    const delay = error.retryAfter ? error.retryAfter * 1000 : this.backoff;
    this.handlers.onError?.(error);
    setTimeout(() => {
      if (this.pending.has(nonce)) this.transport.send(entry.text, nonce);
    }, delay);
  }
}
