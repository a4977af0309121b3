// Which transport carries the room, and when to change it: the one place that decides.
//
// The ladder is WebSocket, then the event stream, then long-poll (docs/protocol.md,
// "Choosing a transport"). A transport proves itself by the server's `subscribed`; one
// that fails before that, or stays silent for PROOF_MS (a proxy that swallows the upgrade
// or buffers the stream), gives way to the next. Once settled below the top, the better
// ones are tried again after a growing delay, alongside the working one: the page moves
// up only when the better one has proved itself, so it is never without a transport.
//
// Every switch resumes each room from the client's cursor; the client drops what it has
// already shown, so nothing is lost or shown twice. Each transport carries every room the
// page follows on one connection (websocket.js, stream.js, longpoll.js).

import { connectionLost } from "./errors.js";
import { PollLoop, PostSender } from "./longpoll.js";
import { StreamSubscription } from "./stream.js";
import { Backoff } from "./timing.js";
import { FrameSender, WebSocketSubscription } from "./websocket.js";

export const LADDER = ["websocket", "stream", "longpoll"];
export const PROOF_MS = 4000;
const PROBE_MIN_MS = 10_000;
const PROBE_MAX_MS = 300_000;

// Each transport: a receiver (start, stop, update when the set of rooms changes) that
// reports to its link, and a sender for the outbox's messages (send) and for edits,
// deletions (command) and typing notices (notify).
const BUILD = {
  websocket(link, paths) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const sender = new FrameSender();
    const receiver = new WebSocketSubscription(link, `${scheme}//${location.host}${paths.ws}`, sender);
    return { receiver, sender };
  },
  stream(link, paths) {
    return { receiver: new StreamSubscription(link, paths.stream, paths.poll), sender: new PostSender(paths.poll) };
  },
  longpoll(link, paths) {
    return { receiver: new PollLoop(link, paths.poll), sender: new PostSender(paths.poll) };
  },
};

// One try of one transport. Its receiver talks to the client through this link, which
// passes on only what the current attempt says.
class Attempt {
  constructor(selector, name) {
    this.selector = selector;
    this.name = name;
    this.proofTimer = null;
    const client = selector.client;
    this.link = {
      // [room, since] for every room to carry, the room on screen first
      cursors: () => client.cursors(),
      opening: () => selector.opening(this),
      connected: () => selector.proved(this),
      failed: () => selector.failed(this),
      disconnected: () => this.current && client.disconnected(),
      subscribed: (room, last) => this.current && client.subscribed(room, last),
      deliver: (events) => this.current && client.deliver(events),
      // A long-poll answer's cursor for a room.
      reached: (room, last) => this.current && client.reached(room, last),
      roomEnded: (room, error) => this.current && client.roomEnded(room, error),
      // The connection was ended for good (a moderator): no reconnecting.
      ended: (error) => this.current && client.connectionEnded(error),
      showError: (error) => this.current && client.showError(error),
      // Resolves when the client knows who it is now: reconnect after that.
      sessionChanged: async () => {
        if (this.current) await client.sessionChanged({ told: true });
      },
    };
    ({ receiver: this.receiver, sender: this.sender } = BUILD[name](this.link, selector.paths));
  }

  get current() {
    return this.selector.current === this;
  }

  stop() {
    clearTimeout(this.proofTimer);
    this.receiver.stop();
  }
}

export class TransportSelector {
  // mode: "auto", or one of LADDER to use that transport only
  constructor(client, paths, mode = "auto") {
    this.client = client;
    this.paths = paths;
    this.forced = mode !== "auto";
    this.ladder = this.forced ? [mode] : LADDER;
    this.current = null; // the Attempt the client listens to
    this.candidate = null; // a better transport being tried while the current one works
    this.probeBackoff = new Backoff(PROBE_MIN_MS, PROBE_MAX_MS);
    this.probeTimer = null;
    // What the outbox sends through: always the current transport's sender.
    const selector = this;
    this.sender = {
      get ready() {
        return selector.current?.sender.ready ?? false;
      },
      send: (entry) => selector.current.sender.send(entry),
      command: (fields) => selector.current?.sender.command(fields) ?? Promise.reject(connectionLost()),
      notify: (fields) => selector.current?.sender.notify(fields),
    };
  }

  get running() {
    return this.current !== null;
  }

  start() {
    this.probeBackoff.reset();
    this.use(this.ladder[0]);
  }

  // The rooms to carry changed: each receiver subscribes or leaves as it must.
  roomsChanged() {
    this.current?.receiver.update();
    this.candidate?.receiver.update();
  }

  stop() {
    clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.candidate?.stop();
    this.current?.stop();
    this.candidate = this.current = null;
  }

  use(name) {
    this.current?.stop();
    this.current = new Attempt(this, name);
    this.client.view.onTransport(name);
    this.current.receiver.start();
  }

  // --- told by an attempt's receiver ----------------------------------------------------

  // A connection is being opened: it has PROOF_MS to say `subscribed`. The last rung
  // has nowhere to go, and a forced transport keeps trying by itself.
  opening(attempt) {
    clearTimeout(attempt.proofTimer);
    if (this.forced || attempt.name === this.ladder.at(-1)) return;
    attempt.proofTimer = setTimeout(() => this.failed(attempt), PROOF_MS);
  }

  proved(attempt) {
    clearTimeout(attempt.proofTimer);
    if (attempt === this.candidate) {
      // Better, and working: move up now. The new one resumed from the last id.
      this.candidate = null;
      this.current.stop();
      this.current = attempt;
      this.client.view.onTransport(attempt.name);
      this.probeBackoff.reset();
    }
    if (attempt !== this.current) return;
    this.client.connected();
    this.scheduleProbe();
  }

  failed(attempt) {
    clearTimeout(attempt.proofTimer);
    if (this.forced) {
      if (attempt === this.current) this.client.disconnected();
      return;
    }
    if (attempt === this.candidate) {
      attempt.stop();
      this.candidate = null;
      this.probe(this.ladder.indexOf(attempt.name) + 1);
      return;
    }
    if (attempt !== this.current) return;
    const next = this.ladder.indexOf(attempt.name) + 1;
    if (next >= this.ladder.length) return;
    this.client.disconnected();
    this.use(this.ladder[next]);
  }

  // --- moving back up -------------------------------------------------------------------

  scheduleProbe() {
    if (this.forced || this.probeTimer !== null || this.candidate !== null) return;
    if (this.ladder.indexOf(this.current.name) === 0) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.probe(0);
    }, this.probeBackoff.next());
  }

  // Try the rungs above the current one, best first, one at a time.
  probe(rung) {
    const currentRung = this.ladder.indexOf(this.current?.name);
    if (rung >= currentRung) {
      this.scheduleProbe(); // nothing better works yet: later, after a longer wait
      return;
    }
    this.candidate = new Attempt(this, this.ladder[rung]);
    this.candidate.receiver.start();
  }
}
