// The room page: shows what the ChatClient reports, for the room on screen, and turns what
// the reader does into client calls. Rooms change without a reload: the address follows
// (history.pushState), and Back and Forward move between rooms.

import { ChatClient } from "./chat-client.js";
import { Composer } from "./composer.js";
import { describeError } from "./errors.js";
import { csrfToken } from "./http.js";
import { PeoplePanel, showTyping } from "./people.js";
import { RoomNav } from "./room-nav.js";
import { Timeline } from "./timeline.js";

const TRANSPORT_NAMES = { websocket: "WebSocket", stream: "event stream", longpoll: "long-poll" };
const STATE_HINTS = {
  connecting: "Connecting to the chat server…",
  connected: "Connected: new messages appear as they are sent.",
  reconnecting: "The connection was lost: reconnecting by itself. Messages you send wait until it is back.",
  offline: "This device is offline: the chat reconnects when the network is back.",
  disconnected: "A moderator ended your connection.",
  stopped: "This room cannot be followed any more.",
};
// "Lobby · Django Twisted Chat": the part after the room's name.
const SITE_TITLE = document.title.slice(document.title.lastIndexOf(" · ") + 3);

const $ = (selector) => document.querySelector(selector);

// The same page for another room: /chats/2/, /chats/long_poll/2/, /chats/2/?transport=stream
function roomUrl(id) {
  return location.pathname.replace(/\d+\/$/, `${id}/`) + location.search;
}

function roomFromUrl() {
  const match = location.pathname.match(/(\d+)\/$/);
  return match ? Number(match[1]) : null;
}

// The site header, rendered by Django for who the browser was when the page loaded.
function showSignedIn(user) {
  $("#site-signed-in").hidden = user === null;
  $("#site-signed-out").hidden = user !== null;
  $("#site-signed-in .whoami").textContent = user ?? "";
}

// A login in another tab rotates the CSRF secret; the form's token must be the current one.
$("#logout-form")?.addEventListener("submit", (event) => {
  const token = csrfToken();
  if (token) event.target.elements.csrfmiddlewaretoken.value = token;
});

class RoomPage {
  constructor(root) {
    this.root = root;
    this.client = null; // set by start()
    this.connectionError = null;
    this.stateLabel = $("#connection-state");
    this.transportLabel = $("#transport");
    this.errorBox = $("#error");
    this.reconnectButton = $("#reconnect");
    this.typingLine = $("#typing");
    this.loginHint = $(".login-hint");
    this.skipLink = $(".skip-link");
    this.composer = new Composer(
      {
        form: $("#send-form"),
        box: $("#message-input"),
        button: $("#send-button"),
        counter: $("#char-counter"),
        problem: $("#composer-error"),
        label: $("#message-label"),
      },
      {
        limit: () => this.maxLength,
        actions: {
          send: (text) => this.client.send(this.client.current.id, text),
          typing: () => this.client.typing(this.client.current),
          editLast: () => this.timeline.editLast(),
        },
      },
    );
    this.timeline = new Timeline(
      {
        scroller: $("#timeline"),
        log: $("#messages"),
        list: $("#message-list"),
        edge: $("#history-edge"),
        empty: $("#empty-room"),
        jump: $("#new-messages"),
      },
      {
        who: () => ({ user: this.client.user, isStaff: this.client.isStaff }),
        loadOlder: (room) => this.client.loadOlder(room),
        edit: (room, id, text) => this.client.edit(room, id, text),
        askDelete: (room, id) => this.askDelete(room, id),
        retry: (nonce) => this.client.retry(nonce),
        discard: (nonce) => this.client.discard(nonce),
        revise: (nonce) => this.revise(nonce),
      },
    );
    this.nav = new RoomNav(
      { nav: $("#room-nav"), list: $("#room-list"), toggle: $("#rooms-toggle"), close: $("#rooms-close") },
      { open: (id) => this.go(id), urlOf: roomUrl },
    );
    this.people = new PeoplePanel({
      panel: $("#people"),
      list: $("#people-list"),
      toggle: $("#people-toggle"),
      count: $("#people-count"),
    });
    this.deleteDialog = $("#delete-dialog");
    this.reconnectButton.addEventListener("click", () => this.client.reconnect());
    addEventListener("online", () => this.showState());
    addEventListener("offline", () => this.showState());
    addEventListener("popstate", () => {
      const id = roomFromUrl();
      if (id !== null) this.client.open(id);
    });
  }

  // The page's length limit, as Django rendered it.
  get maxLength() {
    return Number(this.root.dataset.maxLength);
  }

  start() {
    const data = this.root.dataset;
    this.client = new ChatClient({
      room: data.roomId,
      transport: data.transport,
      user: data.username || null,
      isStaff: data.isStaff === "1",
      paths: {
        ws: data.wsPath,
        stream: data.streamPath,
        poll: data.pollPath,
        session: data.sessionPath,
        rooms: data.roomsPath,
        history: data.historyPath,
      },
      view: this,
    });
    const room = this.client.current;
    room.name = $("#room-name").textContent;
    room.description = $("#room-description").textContent;
    history.replaceState({ room: room.id }, "");
    this.onRoomOpened(room, 0);
    this.client.start();
    this.composer.focus();
  }

  // The reader picked a room: the address follows, so Back returns here.
  go(id) {
    if (id === this.client.current.id) return;
    history.pushState({ room: id }, "", roomUrl(id));
    this.client.open(id);
    this.composer.focus();
  }

  // --- told by the client -----------------------------------------------------------------

  onRoomOpened(room, unread) {
    this.root.dataset.roomId = String(room.id);
    this.composer.setRoom(room.id);
    this.showRoomName(room);
    this.timeline.show(room, this.client.pendingIn(room), unread);
    this.people.show(room, this.client.user);
    showTyping(this.typingLine, room);
    this.showRoomEnded(room);
    this.showState();
  }

  onRooms() {
    const rooms = [...this.client.rooms.values()];
    this.nav.show(rooms, this.client.current);
    this.showRoomName(this.client.current); // the list may know it better than the page did
  }

  onSubscribed(room) {
    if (room !== this.client.current) return;
    this.timeline.updateEdge();
    this.timeline.maybeLoadOlder();
  }

  onMessages(room, change) {
    if (room === this.client.current) this.timeline.changed(change);
  }

  onHistory(room, added) {
    if (room === this.client.current) this.timeline.historyChanged(added);
  }

  onPending(room, record) {
    if (room === this.client.current) this.timeline.pendingChanged(record);
    const { state, error } = record;
    // Refused for good, or held back by the rate limit: say why by the box too, until a
    // later message goes through.
    if (state === "failed" || (state === "waiting" && error.code === "rate_limited")) {
      const words = describeError(error);
      this.composer.showProblem(state === "failed" ? `Your message was not sent: ${words}.` : `${words}.`);
    }
  }

  onPendingGone(room, nonce) {
    if (room === this.client.current) this.timeline.pendingGone(nonce);
  }

  onSent() {
    this.composer.clearProblem();
  }

  onPresence(room) {
    if (room === this.client.current) this.people.show(room, this.client.user);
  }

  onTyping(room) {
    if (room === this.client.current) showTyping(this.typingLine, room);
  }

  // The server ended our subscription to the room, or we may follow it again.
  onRoomAccess(room) {
    if (room !== this.client.current) return;
    this.showRoomEnded(room);
    this.timeline.updateEdge();
    this.people.show(room, this.client.user);
    showTyping(this.typingLine, room);
    this.showState();
  }

  onState() {
    if (this.client.state === "connected") this.connectionError = null;
    this.showState();
  }

  onTransport(name) {
    this.transportLabel.textContent = TRANSPORT_NAMES[name];
    this.transportLabel.dataset.transport = name;
    this.showState();
  }

  onError(error) {
    this.connectionError = error;
    this.showError();
  }

  onIdentity(user) {
    showSignedIn(user);
    this.root.dataset.username = user ?? "";
    this.root.dataset.authenticated = String(user !== null);
    this.composer.form.hidden = user === null;
    this.loginHint.hidden = user !== null;
    this.skipLink.href = user === null ? "#timeline" : "#message-input";
    const room = this.client.current;
    this.timeline.redraw(this.client.pendingIn(room)); // which messages are ours changed
    this.people.show(room, user);
  }

  // --- what the page shows of the room and the connection ---------------------------------------

  showRoomName(room) {
    const name = room.name || `Room ${room.id}`;
    $("#room-name").textContent = name;
    $("#room-description").textContent = room.description;
    $("#room-description").hidden = !room.description;
    document.title = `${name} · ${SITE_TITLE}`;
    this.composer.name(name);
  }

  showState() {
    const room = this.client.current;
    const state = room.ended ? "stopped" : navigator.onLine ? this.client.state : "offline";
    this.stateLabel.textContent = state;
    this.stateLabel.dataset.state = state;
    const transport = this.transportLabel.textContent;
    this.stateLabel.title = transport ? `${STATE_HINTS[state]} (${transport})` : STATE_HINTS[state];
    this.reconnectButton.hidden = this.client.state !== "disconnected";
    this.showError();
  }

  showError() {
    const error = this.client.current.ended ?? this.connectionError;
    this.errorBox.textContent = error ? error.message : "";
    this.errorBox.hidden = !error;
  }

  // The room is gone, closed, or barred to us: nothing typed here could be sent.
  showRoomEnded(room) {
    this.composer.disable(room.ended ? `You can't post here: ${describeError(room.ended)}.` : null);
    if (!room.ended) this.composer.clearProblem();
  }

  // --- what the reader does -------------------------------------------------------------------

  askDelete(room, id) {
    const message = room.messages.get(id);
    if (!message) return;
    $("#delete-preview").textContent = message.text;
    const dialog = this.deleteDialog;
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      async () => {
        if (dialog.returnValue !== "delete") return;
        try {
          await this.client.remove(room, id);
        } catch (error) {
          this.composer.showProblem(`The message was not deleted: ${describeError(error)}.`);
        }
      },
      { once: true },
    );
    dialog.showModal();
  }

  // A message too long to send: back to the box, to be shortened.
  revise(nonce) {
    const record = this.client.pending.get(nonce);
    if (!record) return;
    this.client.discard(nonce);
    this.composer.put(record.entry.text);
  }
}

new RoomPage(document.getElementById("chat")).start();
