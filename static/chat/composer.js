// The message box: a textarea where Enter sends and Shift+Enter starts a new line, with a
// counter near the length limit. A longer text is never cut: the counter says how far over
// it is, and it cannot be sent until shortened. Below it, why the last send failed, until
// a later one succeeds. Each room keeps its own draft.

import { plural } from "./format.js";

// The counter shows within this share of the limit.
const COUNTER_SHARE = 0.1;
// Typing notices: at most one per interval, and only once the text has stayed a moment
// (a message pasted and sent at once needs none).
const TYPING_EVERY_MS = 3000;
const TYPING_SETTLE_MS = 1000;

// The server counts characters (code points) of the text without its outer white space.
function textLength(text) {
  let count = 0;
  for (const _ of text.trim()) count += 1;
  return count;
}

export class Composer {
  // parts: { form, box, button, counter, problem, label }
  // limit(): the page's length limit; actions: send(text) (throws a ChatError when it
  // cannot), typing(), editLast()
  constructor(parts, { limit, actions }) {
    Object.assign(this, parts);
    this.limit = limit;
    this.actions = actions;
    this.drafts = new Map(); // room id -> text typed and not sent
    this.roomId = null;
    this.typingTimer = null;
    this.typingSentAt = 0;
    this.box.addEventListener("input", () => this.changed());
    this.box.addEventListener("keydown", (event) => this.keydown(event));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.changed();
  }

  keydown(event) {
    if (event.isComposing) return; // an input method is still building the text
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      this.submit();
    } else if (event.key === "ArrowUp" && this.box.value === "") {
      event.preventDefault();
      this.actions.editLast();
    }
  }

  submit() {
    const text = this.box.value.trim();
    if (!text || this.box.disabled) return;
    const limit = this.limit();
    const over = textLength(text) - limit;
    if (over > 0) {
      const overBy = plural(over, "character", "characters");
      this.showProblem(`This message is ${overBy} over the limit of ${limit}: shorten it to send.`);
      return;
    }
    try {
      this.actions.send(text);
    } catch (error) {
      this.showProblem(error.message);
      return;
    }
    this.box.value = "";
    this.changed();
  }

  changed() {
    this.grow();
    this.count();
    this.noteTyping();
  }

  // Taller with each line, up to a point; then it scrolls.
  grow() {
    this.box.style.height = "auto";
    this.box.style.height = `${Math.min(this.box.scrollHeight + 2, 200)}px`;
  }

  count() {
    const limit = this.limit();
    const length = textLength(this.box.value);
    const left = limit - length;
    const over = left < 0;
    this.counter.hidden = left > limit * COUNTER_SHARE;
    this.counter.textContent = over ? `${-left} over the limit` : `${left} left`;
    this.counter.dataset.state = over ? "over" : "near";
    this.box.setAttribute("aria-invalid", String(over));
    this.button.disabled = this.box.disabled || over || length === 0;
  }

  noteTyping() {
    if (this.box.value.trim() === "") {
      clearTimeout(this.typingTimer);
      this.typingTimer = null;
      if (this.box.value === "") this.typingSentAt = 0; // sent or cleared: a new message next
      return;
    }
    if (this.typingTimer !== null || Date.now() - this.typingSentAt < TYPING_EVERY_MS) return;
    this.typingTimer = setTimeout(() => {
      this.typingTimer = null;
      if (this.box.value.trim() === "") return;
      this.typingSentAt = Date.now();
      this.actions.typing();
    }, TYPING_SETTLE_MS);
  }

  // Another room on screen: this one's draft is kept for when it comes back.
  setRoom(roomId) {
    if (this.roomId !== null) this.drafts.set(this.roomId, this.box.value);
    this.roomId = roomId;
    this.box.value = this.drafts.get(roomId) ?? "";
    clearTimeout(this.typingTimer);
    this.typingTimer = null;
    this.typingSentAt = 0;
    this.clearProblem();
    this.changed();
  }

  // The room's name, in the box's label.
  name(roomName) {
    this.label.textContent = `Message ${roomName}`;
    this.box.placeholder = `Message ${roomName}`;
  }

  // Posting is not possible here (`reason`), or possible again (null).
  disable(reason) {
    this.box.disabled = reason !== null;
    if (reason !== null) this.showProblem(reason);
    this.count();
  }

  // A failed message's text, back in the box to be changed.
  put(text) {
    this.box.value = text;
    this.changed();
    this.focus();
  }

  showProblem(text) {
    this.problem.textContent = text;
    this.problem.hidden = false;
  }

  clearProblem() {
    this.problem.textContent = "";
    this.problem.hidden = true;
  }

  focus() {
    this.box.focus();
  }
}
