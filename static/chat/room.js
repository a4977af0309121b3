// The room page: shows what the ChatClient reports. Text is only ever set with
// textContent, so a message is shown as what it is, never run as HTML.

import { ChatClient } from "./chat-client.js";

const TRANSPORT_NAMES = { websocket: "WebSocket", stream: "event stream", longpoll: "long-poll" };

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

// The site header, rendered by Django for who the browser was when the page loaded.
function showSignedIn(user) {
  document.getElementById("site-signed-in").hidden = user === null;
  document.getElementById("site-signed-out").hidden = user !== null;
  document.querySelector("#site-signed-in .whoami").textContent = user ?? "";
}

// A login in another tab rotates the CSRF secret; the form's token must be the current one.
document.getElementById("logout-form")?.addEventListener("submit", (event) => {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) event.target.elements.csrfmiddlewaretoken.value = decodeURIComponent(match[1]);
});

class RoomView {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector("#messages");
    this.stateLabel = root.querySelector("#connection-state");
    this.transportLabel = root.querySelector("#transport");
    this.errorBox = root.querySelector("#error");
    this.form = root.querySelector("#send-form");
    this.input = root.querySelector("#message-input");
    this.button = root.querySelector("#send-button");
    this.loginHint = root.querySelector(".login-hint");
  }

  get user() {
    return this.root.dataset.username || null;
  }

  // --- the room's messages ---------------------------------------------------------------

  onMessages(messages) {
    const stick = this.nearBottom();
    const fragment = document.createDocumentFragment();
    for (const message of messages) fragment.append(this.messageRow(message));
    // Messages still being sent stay below everything the server has stored.
    this.list.insertBefore(fragment, this.list.querySelector("li.pending"));
    if (stick) this.scrollToBottom();
  }

  onDeleted(id) {
    this.list.querySelector(`li.message[data-id="${Number(id)}"]`)?.remove();
  }

  messageRow(message) {
    const when = new Date(message.ts);
    const time = document.createElement("time");
    time.className = "time";
    time.dateTime = when.toISOString();
    time.textContent = timeFormat.format(when);

    const row = this.row(message.user, time, message.text);
    row.dataset.id = String(message.id);
    row.dataset.user = message.user;
    row.classList.toggle("mine", message.user === this.user);
    return row;
  }

  // --- messages not stored yet -------------------------------------------------------------

  onQueued(entry) {
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = "waiting";

    const row = this.row(this.user, status, entry.text);
    row.classList.add("pending", "mine");
    row.dataset.nonce = entry.nonce;
    this.list.append(row);
    this.scrollToBottom();
  }

  onSending(entry) {
    this.setStatus(entry.nonce, "sending…");
  }

  onWaiting(entry, error) {
    this.setStatus(entry.nonce, "waiting", error.message);
  }

  // Stored and shown as a real message: the pending copy goes.
  onSettled(nonce) {
    this.pendingRow(nonce)?.remove();
  }

  // Refused for good: the row stays, with the reason, so the text is not lost.
  onFailed(entry, error) {
    const row = this.pendingRow(entry.nonce);
    if (!row) return;
    row.classList.replace("pending", "failed");
    row.querySelector(".status").textContent = `not sent: ${error.message}`;
  }

  pendingRow(nonce) {
    return this.list.querySelector(`li.pending[data-nonce="${CSS.escape(nonce)}"]`);
  }

  setStatus(nonce, label, reason = "") {
    const row = this.pendingRow(nonce);
    if (!row) return;
    row.querySelector(".status").textContent = label;
    row.title = reason;
  }

  // --- connection and identity -------------------------------------------------------------

  onState(state) {
    this.stateLabel.textContent = state;
    this.stateLabel.dataset.state = state;
    if (state === "connected") this.onError(null);
    // The room is gone or closed to us: nothing typed here could be sent.
    this.input.disabled = state === "stopped";
    this.button.disabled = state === "stopped";
  }

  onTransport(name) {
    this.transportLabel.textContent = TRANSPORT_NAMES[name];
    this.transportLabel.dataset.transport = name;
  }

  onError(error) {
    this.errorBox.textContent = error ? error.message : "";
    this.errorBox.hidden = !error;
  }

  onIdentity(user) {
    showSignedIn(user);
    this.root.dataset.username = user ?? "";
    this.root.dataset.authenticated = String(user !== null);
    this.form.hidden = user === null;
    this.loginHint.hidden = user !== null;
    for (const row of this.list.querySelectorAll("li.message[data-id]")) {
      row.classList.toggle("mine", row.dataset.user === user);
    }
    // The previous user's unsent messages are theirs: they stay stored, not shown.
    for (const row of this.list.querySelectorAll("li.pending")) row.remove();
  }

  // --- helpers -------------------------------------------------------------------------------

  // author, then `meta` (the time, or a pending message's status), then the text
  row(user, meta, text) {
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = user;

    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    // Each name and text is its own bidi isolate: right-to-left text reads right, and no
    // direction control in one message can reorder anything around it.
    author.dir = body.dir = "auto";

    const row = document.createElement("li");
    row.className = "message";
    row.append(author, " ", meta, " ", body);
    return row;
  }

  nearBottom() {
    return this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 80;
  }

  scrollToBottom() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

const root = document.getElementById("chat");
const view = new RoomView(root);
const client = new ChatClient({
  room: root.dataset.roomId,
  transport: root.dataset.transport,
  user: view.user,
  paths: {
    ws: root.dataset.wsPath,
    stream: root.dataset.streamPath,
    poll: root.dataset.pollPath,
    session: root.dataset.sessionPath,
  },
  view,
});

view.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = view.input.value.trim();
  if (!text) return;
  try {
    client.send(text);
    view.input.value = "";
  } catch (error) {
    view.onError(error);
  }
});

client.start();
view.scrollToBottom();
