// The timeline of the room on screen: its messages in id order, grouped by author, with a
// separator at each new day, then the messages typed here and not stored yet. It keeps the
// view pinned to the newest message while the reader is there, offers a "new messages"
// button when they have scrolled up, and fetches older history when they reach the top.
//
// Rows carry what grouping needs (data-user, data-ts); each change fixes the rows around
// it rather than drawing everything again.

import { describeError } from "./errors.js";
import { dayKey, dayLabel, plural, untilMidnight } from "./format.js";
import { messageRow, pendingRow, tick, updatePendingRow } from "./message-row.js";

// Consecutive messages from one author share a header within this time.
const GROUP_MS = 5 * 60 * 1000;
// Closer than this to the bottom counts as at the bottom; to the top, as time for more.
const BOTTOM_SLACK = 40;
const TOP_SLACK = 300;

export class Timeline {
  // parts: { scroller, log, list, edge, empty, jump }
  // handlers: who() -> { user, isStaff }, loadOlder(room), edit(room, id, text),
  //           askDelete(room, id), retry(nonce), discard(nonce), revise(nonce)
  constructor(parts, handlers) {
    Object.assign(this, parts);
    this.handlers = handlers;
    this.room = null;
    this.unseen = 0; // messages that came while the reader was scrolled up
    this.places = new Map(); // room id -> { atBottom, top } when it was left
    this.scroller.addEventListener("scroll", () => this.scrolled());
    this.jump.addEventListener("click", () => {
      this.scrollToBottom();
      this.scroller.focus({ preventScroll: true });
    });
    this.list.addEventListener("click", (event) => this.clicked(event));
    this.edge.addEventListener("click", (event) => {
      if (event.target.closest("button")) this.handlers.loadOlder(this.room);
    });
    // The list shrinks when the composer grows: stay at the bottom if we were there.
    this.pinned = true;
    new ResizeObserver(() => this.pinned && this.scrollToBottom()).observe(this.scroller);
    setInterval(() => this.list.querySelectorAll(".status[data-until]").forEach(tick), 1000);
    this.relabelDaysAtMidnight();
  }

  // --- a whole room ---------------------------------------------------------------------

  // unread: how many came while the room was not on screen.
  show(room, pending, unread) {
    if (this.room) this.places.set(this.room.id, { atBottom: this.atBottom(), top: this.scroller.scrollTop });
    this.room = room;
    this.redraw(pending);
    const place = this.places.get(room.id);
    if (!place || place.atBottom) {
      this.scrollToBottom();
    } else {
      // Where the reader left it; what came meanwhile is below, and the button says so.
      this.scroller.scrollTop = place.top;
      this.pinned = false;
      this.setUnseen(unread);
    }
    this.maybeLoadOlder();
  }

  // Draws the room again: on opening it, and when who we are changes (whose messages are ours).
  redraw(pending) {
    this.busy(() => {
      this.list.replaceChildren();
      const who = this.handlers.who();
      for (const message of this.room.sorted()) this.list.append(messageRow(message, who));
      for (const record of pending) this.list.append(pendingRow(record, who.user));
      for (const row of this.list.children) if (row.classList.contains("message")) this.regroup(row);
    });
    this.updateEdge();
  }

  // --- changes --------------------------------------------------------------------------

  changed({ added, updated, removed }) {
    const stick = this.atBottom();
    const who = this.handlers.who();
    for (const message of added) this.place(messageRow(message, who));
    for (const message of updated) this.replace(message);
    for (const id of removed) this.removeRow(this.row(id));
    this.updateEdge();
    if (stick) this.scrollToBottom();
    else this.setUnseen(this.unseen + added.filter((m) => m.user !== who.user && !m.system).length);
  }

  // History is loading, or failed, or brought older messages: those go above what the
  // reader sees, without moving it.
  historyChanged(messages) {
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const who = this.handlers.who();
    this.busy(() => {
      for (const message of messages) this.place(messageRow(message, who));
    });
    this.updateEdge();
    this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    this.maybeLoadOlder();
  }

  pendingChanged(record) {
    const row = this.list.querySelector(`li[data-nonce="${CSS.escape(record.entry.nonce)}"]`);
    if (row) {
      updatePendingRow(row, record);
      return;
    }
    const added = pendingRow(record, this.handlers.who().user);
    this.list.append(added);
    this.regroup(added);
    this.updateEdge();
    this.scrollToBottom(); // the reader just sent it: show it
  }

  pendingGone(nonce) {
    this.removeRow(this.list.querySelector(`li[data-nonce="${CSS.escape(nonce)}"]`));
    this.updateEdge();
  }

  // --- placing rows -----------------------------------------------------------------------

  row(id) {
    return this.list.querySelector(`li.message[data-id="${Number(id)}"]`);
  }

  // A stored message goes in id order, before the messages still pending.
  place(row) {
    const id = Number(row.dataset.id);
    const stored = this.list.querySelectorAll("li.message[data-id]");
    let next = this.list.querySelector("li.message:not([data-id])"); // the first pending one
    if (stored.length && id < Number(stored[0].dataset.id)) {
      next = stored[0];
    } else {
      for (let i = stored.length - 1; i >= 0 && Number(stored[i].dataset.id) > id; i--) next = stored[i];
    }
    // Before the next row's day separator too: regroup() then puts separators where the
    // days now change.
    const anchor = next?.previousElementSibling?.classList.contains("day") ? next.previousElementSibling : next;
    this.list.insertBefore(row, anchor ?? null);
    this.regroup(row);
    this.regroup(nextMessage(row));
  }

  replace(message) {
    const old = this.row(message.id);
    if (!old || old.querySelector(".edit-form")) return; // being edited: redrawn when done
    const row = messageRow(message, this.handlers.who());
    old.replaceWith(row);
    this.regroup(row);
  }

  removeRow(row) {
    if (!row) return;
    const next = nextMessage(row);
    if (row.previousElementSibling?.classList.contains("day")) row.previousElementSibling.remove();
    row.remove();
    this.regroup(next);
  }

  // Whether `row` starts a day (then a separator goes before it) and whether it continues
  // its author's group (then its header is hidden).
  regroup(row) {
    if (!row) return;
    const previous = previousMessage(row);
    const ts = Number(row.dataset.ts);
    const startsDay = !previous || dayKey(Number(previous.dataset.ts)) !== dayKey(ts);
    const separator = row.previousElementSibling?.classList.contains("day") ? row.previousElementSibling : null;
    if (startsDay) {
      if (separator) relabel(separator, ts);
      else row.before(daySeparator(ts));
    } else {
      separator?.remove();
    }
    const continues =
      !startsDay &&
      !row.classList.contains("system") &&
      !previous.classList.contains("system") &&
      previous.dataset.user === row.dataset.user &&
      ts - Number(previous.dataset.ts) < GROUP_MS;
    row.classList.toggle("continued", continues);
  }

  relabelDaysAtMidnight() {
    setTimeout(() => {
      for (const separator of this.list.querySelectorAll("li.day")) relabel(separator, Number(separator.dataset.ts));
      this.relabelDaysAtMidnight();
    }, untilMidnight() + 1000);
  }

  // Many rows at once (a room opened, a page of history): the log announces new
  // messages as they come, not these.
  busy(change) {
    this.log.setAttribute("aria-busy", "true");
    change();
    requestAnimationFrame(() => this.log.setAttribute("aria-busy", "false"));
  }

  // --- the top: history, the beginning, an empty room ---------------------------------------

  updateEdge() {
    const room = this.room;
    const { more, loading, error } = room.history;
    const hasRows = this.list.querySelector("li.message") !== null;
    this.empty.hidden = hasRows || more !== false || room.ended !== null;
    this.edge.replaceChildren();
    if (loading) {
      this.edge.textContent = "Loading older messages…";
    } else if (error) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Try again";
      this.edge.append(`Older messages could not be loaded: ${describeError(error)}. `, retry);
    } else if (more === false) {
      if (hasRows) this.edge.textContent = `This is the beginning of ${room.name || "the room"}.`;
    } else if (room.subscribed) {
      const load = document.createElement("button");
      load.type = "button";
      load.className = "link-button";
      load.textContent = "Load older messages";
      this.edge.append(load);
    }
    this.edge.dataset.state = loading ? "loading" : error ? "error" : more === false ? "beginning" : "more";
  }

  // Near the top, and more to fetch: fetch it. Not again after a failure until asked.
  maybeLoadOlder() {
    const { more, loading, error } = this.room.history;
    if (!this.room.subscribed || more === false || loading || error || this.room.ended) return;
    if (this.scroller.scrollTop < TOP_SLACK) this.handlers.loadOlder(this.room);
  }

  // --- scrolling ------------------------------------------------------------------------

  atBottom() {
    const { scrollHeight, scrollTop, clientHeight } = this.scroller;
    return scrollHeight - scrollTop - clientHeight < BOTTOM_SLACK;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.pinned = true;
    this.setUnseen(0);
  }

  scrolled() {
    this.pinned = this.atBottom();
    if (this.pinned) this.setUnseen(0);
    this.maybeLoadOlder();
  }

  setUnseen(count) {
    this.unseen = count;
    this.jump.hidden = count === 0;
    this.jump.textContent = plural(count, "new message", "new messages");
  }

  // --- what the reader does to a row ------------------------------------------------------

  clicked(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("li.message");
    const { action } = button.dataset;
    if (action === "edit") this.startEdit(row);
    else if (action === "delete") this.handlers.askDelete(this.room, Number(row.dataset.id));
    else this.handlers[action](row.dataset.nonce); // retry, discard, revise
  }

  // The latest message of ours, edited from the keyboard (Up in an empty composer).
  editLast() {
    const mine = this.list.querySelectorAll("li.message.mine[data-id]:not(.provisional)");
    if (mine.length) this.startEdit(mine[mine.length - 1]);
  }

  // In place: Enter saves, Shift+Enter is a new line, Escape cancels.
  startEdit(row) {
    if (row.querySelector(".edit-form")) return;
    const id = Number(row.dataset.id);
    const room = this.room;
    const message = room.messages.get(id);
    const form = document.createElement("form");
    form.className = "edit-form";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = `edit-${id}`;
    label.textContent = "Edit message";
    const box = document.createElement("textarea");
    box.id = `edit-${id}`;
    box.dir = "auto";
    box.rows = Math.min(8, message.text.split("\n").length);
    box.value = message.text;
    const hint = document.createElement("span");
    hint.className = "edit-hint";
    hint.textContent = "Enter to save · Escape to cancel";
    const save = document.createElement("button");
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "secondary";
    cancel.textContent = "Cancel";
    const problem = document.createElement("p");
    problem.className = "edit-error";
    problem.setAttribute("role", "alert");
    form.append(label, box, hint, save, cancel, problem);
    row.querySelector(".content").replaceWith(form);
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);

    const finish = () => {
      this.redrawRow(room, id);
      this.row(id)?.querySelector('button[data-action="edit"]')?.focus();
    };
    cancel.addEventListener("click", finish);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        finish();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = box.value.trim();
      if (!text || text === message.text) {
        finish();
        return;
      }
      box.disabled = save.disabled = true;
      problem.textContent = "saving…";
      try {
        await this.handlers.edit(room, id, text);
        finish();
      } catch (error) {
        box.disabled = save.disabled = false;
        problem.textContent = `not saved: ${describeError(error)}`;
        box.focus();
      }
    });
  }

  redrawRow(room, id) {
    const old = this.row(id);
    if (!old || room !== this.room) return;
    const message = room.messages.get(id);
    if (!message) {
      this.removeRow(old);
      return;
    }
    const row = messageRow(message, this.handlers.who());
    old.replaceWith(row);
    this.regroup(row);
  }
}

function daySeparator(ts) {
  const separator = document.createElement("li");
  separator.className = "day";
  separator.append(document.createElement("span"));
  relabel(separator, ts);
  return separator;
}

function relabel(separator, ts) {
  separator.dataset.ts = String(ts);
  separator.firstChild.textContent = dayLabel(ts);
}

function previousMessage(row) {
  let previous = row.previousElementSibling;
  while (previous && !previous.classList.contains("message")) previous = previous.previousElementSibling;
  return previous;
}

function nextMessage(row) {
  let next = row.nextElementSibling;
  while (next && !next.classList.contains("message")) next = next.nextElementSibling;
  return next;
}
