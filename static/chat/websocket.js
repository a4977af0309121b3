// The chat over one WebSocket (docs/protocol.md): a subscription per room the page
// carries, all on one socket that is kept open, and a sender that writes commands on the
// same socket.

import { ChatError, connectionLost } from "./errors.js";
import { Backoff } from "./timing.js";

// Close codes of the server: the browser's session changed (a logout, or a login in
// another tab); a moderator ended the connection (the error frame before it says why).
const SESSION_CHANGED = 4001;
const DISCONNECTED = 4003;

const CARRIED = new Set(["message", "edited", "deleted", "presence", "typing"]);

// Writes commands, and settles each one that carries a nonce when its ack or error comes.
export class FrameSender {
  constructor() {
    this.socket = null;
    this.answers = new Map(); // nonce -> { resolve, reject }
  }

  get ready() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  attach(socket) {
    this.socket = socket;
  }

  // The socket closed: an unanswered command may or may not have been carried out. The
  // caller sends it again with the same nonce, and the server does it once.
  detach() {
    this.socket = null;
    for (const { reject } of this.answers.values()) reject(connectionLost());
    this.answers.clear();
  }

  // A message from the outbox: resolves to its id.
  async send(entry) {
    const ack = await this.command({ type: "send", room: entry.room, text: entry.text, nonce: entry.nonce });
    return ack.id;
  }

  // A command that is answered: resolves to the ack ({ room, id, seq }).
  command(fields) {
    return new Promise((resolve, reject) => {
      if (!this.ready) {
        reject(connectionLost());
        return;
      }
      this.answers.set(fields.nonce, { resolve, reject });
      this.socket.send(JSON.stringify(fields));
    });
  }

  // A notice that needs no answer (typing): dropped while the socket is away.
  notify(fields) {
    if (this.ready) this.socket.send(JSON.stringify(fields));
  }

  // An `ack`, or an `error` that carries a nonce.
  answered(frame) {
    const answer = this.answers.get(frame.nonce);
    if (!answer) return;
    this.answers.delete(frame.nonce);
    if (frame.type === "ack") answer.resolve(frame);
    else answer.reject(ChatError.fromWire(frame));
  }
}

// Keeps the page's rooms subscribed: reopens the socket after a drop and subscribes each
// room again from its cursor, so nothing is missed or shown twice. It reports to its link
// (transports.js): a socket that closes before any `subscribed` has failed.
export class WebSocketSubscription {
  constructor(link, url, sender) {
    this.link = link;
    this.url = url;
    this.sender = sender;
    this.backoff = new Backoff();
    this.socket = null;
    this.rooms = new Set(); // subscribed, or asked for, on this socket
    this.timer = null;
    this.retryTimers = new Map(); // room -> a subscribe the server asked us to repeat later
    this.established = false; // this socket said `subscribed`
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.clearRetries();
    this.socket?.close();
    this.sender.detach();
  }

  clearRetries() {
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
  }

  open() {
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.rooms = new Set();
    this.established = false;
    this.link.opening();
    socket.addEventListener("open", () => {
      this.sender.attach(socket);
      this.update();
    });
    socket.addEventListener("message", (event) => {
      if (socket === this.socket && !this.stopped) this.receive(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.sender.detach();
      this.clearRetries();
      this.closed(event.code);
    });
  }

  // Subscribe to the rooms the page carries now and not yet here, each from its cursor,
  // and leave those it no longer carries.
  update() {
    if (this.stopped || this.socket?.readyState !== WebSocket.OPEN) return;
    const wanted = new Map(this.link.cursors());
    for (const [room, since] of wanted) {
      if (!this.rooms.has(room) && !this.retryTimers.has(room)) this.subscribe(room, since);
    }
    for (const room of this.rooms) {
      if (wanted.has(room)) continue;
      this.rooms.delete(room);
      this.socket.send(JSON.stringify({ type: "unsubscribe", room }));
    }
  }

  subscribe(room, since) {
    const frame = { type: "subscribe", room };
    if (since !== null) frame.since = since;
    this.rooms.add(room);
    this.socket.send(JSON.stringify(frame));
  }

  receive(frame) {
    if (CARRIED.has(frame.type)) {
      this.link.deliver([frame]);
      return;
    }
    switch (frame.type) {
      case "subscribed":
        this.proved();
        this.link.subscribed(frame.room, frame.last);
        break;
      case "ack":
        this.sender.answered(frame);
        break;
      case "error":
        this.error(frame);
        break;
      case "unsubscribed":
        // With a code, the server ended the subscription (the room was deleted or closed,
        // or we may no longer read it). Without one it answers our own unsubscribe.
        if (frame.code) {
          this.rooms.delete(frame.room);
          this.link.roomEnded(frame.room, new ChatError(frame.code, frame.message));
        }
        break;
    }
  }

  // The server answered a subscribe: the socket carries frames both ways.
  proved() {
    if (this.established) return;
    this.established = true;
    this.backoff.reset();
    this.link.connected();
  }

  error(frame) {
    const error = ChatError.fromWire(frame);
    if (frame.room !== undefined && !frame.nonce) this.proved();
    if (frame.nonce) {
      this.sender.answered(frame);
    } else if (error.code === "disconnected") {
      this.stop();
      this.link.ended(error); // a moderator ended the connection: do not come back alone
    } else if (frame.room === undefined) {
      this.link.showError(error); // about no command of ours in particular
    } else if (!error.retryable) {
      this.rooms.delete(frame.room);
      this.link.roomEnded(frame.room, error); // the subscription was refused, e.g. unknown_room
    } else {
      // Refused for now (too many subscribes at once, or the server is busy): ask again
      // when the server said to.
      const delay = error.retryAfter === null ? this.backoff.next() : error.retryAfter * 1000;
      this.rooms.delete(frame.room);
      clearTimeout(this.retryTimers.get(frame.room));
      this.retryTimers.set(
        frame.room,
        setTimeout(() => {
          this.retryTimers.delete(frame.room);
          this.update();
        }, delay),
      );
    }
  }

  closed(code) {
    if (this.stopped) return;
    if (code === DISCONNECTED) {
      // The error frame before the close said why; should it have been lost, say it here.
      this.stop();
      this.link.ended(new ChatError("disconnected", "a moderator ended your connection"));
      return;
    }
    if (!this.established) {
      // The upgrade was refused or the socket died before the server answered: perhaps
      // a proxy that does not pass WebSockets. The link may stop us here.
      this.link.failed();
      if (this.stopped) return;
    }
    if (code === SESSION_CHANGED) {
      // Reconnect as soon as the browser's cookie says who it is now.
      this.link.sessionChanged().then(() => this.stopped || this.open());
      return;
    }
    // The server is restarting (1001), we fell behind (4008) or the connection dropped
    // (1006): come back later and resume from the cursors.
    this.link.disconnected();
    this.timer = setTimeout(() => this.open(), this.backoff.next());
  }
}
