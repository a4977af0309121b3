// What the page knows of one room: its messages (from the live subscription and from
// history, merged by id), where to resume, who is there and who is typing, how much came
// while it was not on screen, and whether the server ended our subscription.
//
// Events may come twice (a resume replays what follows the cursor) and may name a message
// never loaded: applying them is idempotent. A change to a message not loaded yet is kept,
// and applied if history brings the message later (a history read may predate the change).

export class RoomState {
  constructor(id) {
    this.id = id;
    this.name = "";
    this.description = "";
    this.isPrivate = false;
    this.messages = new Map(); // id -> message object, as on the wire
    this.changes = new Map(); // id -> the latest edited or deleted event for it
    this.cursor = null; // the resume point: the highest message id or change seq seen
    this.subscribed = false; // the server has answered a subscription at least once
    this.history = { more: null, loading: false, error: null }; // more: null until known
    this.unread = 0;
    this.present = new Set();
    this.typing = new Map(); // user -> when their notice lapses (ms)
    this.ended = null; // the ChatError with which the server ended our subscription
  }

  advance(place) {
    if (Number.isInteger(place) && (this.cursor === null || place > this.cursor)) this.cursor = place;
  }

  // Nothing to show, and nothing older to fetch.
  get empty() {
    return this.messages.size === 0 && this.history.more === false;
  }

  // A message from the subscription, from history, or one of ours the server just stored.
  // Returns "added", "updated" (it replaces what was shown) or null (nothing to show).
  put(message) {
    const change = this.changes.get(message.id);
    if (change?.type === "deleted") return null;
    if (change && !(message.editSeq >= change.seq)) {
      message = { ...message, text: change.text, edited: change.edited, editSeq: change.seq };
    }
    const known = this.messages.get(message.id);
    if (known && !known.provisional && known.text === message.text && known.edited === message.edited) return null;
    this.messages.set(message.id, message);
    return known ? "updated" : "added";
  }

  // An `edited` event, or our own edit once acknowledged. Returns the changed message, if
  // it is loaded and this is newer than what it shows.
  edit(event) {
    const recorded = this.changes.get(event.id);
    if (recorded && recorded.seq > event.seq) return null;
    this.changes.set(event.id, event);
    const message = this.messages.get(event.id);
    if (!message || message.editSeq > event.seq) return null;
    const edited = { ...message, text: event.text, edited: event.edited, editSeq: event.seq };
    this.messages.set(event.id, edited);
    return edited;
  }

  // A `deleted` event, or our own deletion once acknowledged. True when it was shown.
  remove(event) {
    this.changes.set(event.id, event);
    return this.messages.delete(event.id);
  }

  sorted() {
    return [...this.messages.values()].sort((a, b) => a.id - b.id);
  }

  oldestId() {
    let oldest = null;
    for (const id of this.messages.keys()) if (oldest === null || id < oldest) oldest = id;
    return oldest;
  }

  // Who is there: everyone (`users`), or who came and went.
  presence(event) {
    if (event.users) this.present = new Set(event.users);
    for (const user of event.joined ?? []) this.present.add(user);
    for (const user of event.left ?? []) this.present.delete(user);
  }

  // Who is typing now, in the order they started.
  typists(now = Date.now()) {
    return [...this.typing].filter(([, until]) => until > now).map(([user]) => user);
  }
}
