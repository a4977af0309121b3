// The chat over one WebSocket (docs/protocol.md): a subscription that keeps the socket open
// and the room subscribed, and a sender that writes messages on the same socket.

import { ChatError, connectionLost } from "./errors.js";
import { Backoff } from "./timing.js";

// The server closes with this code when the browser's session changed (a logout, or a
// login in another tab).
const SESSION_CHANGED = 4001;

// Sends `send` frames, and settles each message when its ack or error comes back.
export class FrameSender {
  constructor(room) {
    this.room = room;
    this.socket = null;
    this.answers = new Map(); // nonce -> { resolve, reject }
  }

  get ready() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  attach(socket) {
    this.socket = socket;
  }

  // The socket closed: an unanswered message may or may not have been stored. The outbox
  // sends it again with the same nonce, and the server keeps only one.
  detach() {
    this.socket = null;
    for (const { reject } of this.answers.values()) reject(connectionLost());
    this.answers.clear();
  }

  send(entry) {
    return new Promise((resolve, reject) => {
      this.answers.set(entry.nonce, { resolve, reject });
      this.socket.send(JSON.stringify({ type: "send", room: this.room, text: entry.text, nonce: entry.nonce }));
    });
  }

  // An `ack`, or an `error` that carries a nonce.
  answered(frame) {
    const answer = this.answers.get(frame.nonce);
    if (!answer) return;
    this.answers.delete(frame.nonce);
    if (frame.type === "ack") answer.resolve(frame.id);
    else answer.reject(ChatError.fromWire(frame));
  }
}

// Keeps the room subscribed: reopens the socket after a drop and resumes from the last id
// the client has, so nothing is missed or shown twice. It reports to its link
// (transports.js): a socket that closes before `subscribed` has failed.
export class WebSocketSubscription {
  constructor(link, url, sender) {
    this.link = link;
    this.url = url;
    this.sender = sender;
    this.backoff = new Backoff();
    this.socket = null;
    this.timer = null;
    this.retryAfterMs = null; // set when the server refused the subscription for a while
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
    this.socket?.close();
    this.sender.detach();
  }

  open() {
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.established = false;
    this.link.opening();
    socket.addEventListener("open", () => {
      const frame = { type: "subscribe", room: this.link.room };
      if (this.link.lastId !== null) frame.since = this.link.lastId;
      socket.send(JSON.stringify(frame));
      this.sender.attach(socket);
    });
    socket.addEventListener("message", (event) => {
      if (socket === this.socket && !this.stopped) this.receive(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.sender.detach();
      this.closed(event.code);
    });
  }

  receive(frame) {
    switch (frame.type) {
      case "subscribed":
        this.established = true;
        this.backoff.reset();
        this.link.connected();
        break;
      case "message":
      case "deleted":
        this.link.deliver([frame]);
        break;
      case "ack":
        this.sender.answered(frame);
        break;
      case "error":
        this.error(frame);
        break;
      case "unsubscribed":
        // With a code, the server ended the subscription (the room was deleted or is no
        // longer readable). Without one it answers an unsubscribe, which we never send.
        if (frame.code) {
          this.stop();
          this.link.ended(new ChatError(frame.code, frame.message));
        }
        break;
    }
  }

  error(frame) {
    const error = ChatError.fromWire(frame);
    if (frame.nonce) {
      this.sender.answered(frame);
    } else if (frame.room === undefined) {
      this.link.showError(error); // about no command of ours in particular
    } else if (!error.retryable) {
      this.stop();
      this.link.ended(error); // the subscription was refused, e.g. unknown_room
    } else {
      // Refused for now: subscribe again on a new socket, when the server said to.
      this.established = true; // the transport works; the server asked us to wait
      this.link.showError(error);
      this.retryAfterMs = error.retryAfter === null ? null : error.retryAfter * 1000;
      this.socket.close();
    }
  }

  closed(code) {
    if (this.stopped) return;
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
    // (1006): come back later and resume from the last id.
    this.link.disconnected();
    const delay = this.retryAfterMs ?? this.backoff.next();
    this.retryAfterMs = null;
    this.timer = setTimeout(() => this.open(), delay);
  }
}
