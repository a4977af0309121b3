// One row of the timeline: a message the server stored, or one typed here that it has not
// stored yet. Text only ever goes in through text nodes (linkify.js), so a message is
// shown as what it is, never run as HTML.

import { describeError, tooFast } from "./errors.js";
import { formatFullTime, formatTime } from "./format.js";
import { appendText } from "./linkify.js";

// who: { user, isStaff } of the page now.
export function messageRow(message, who) {
  const mine = !message.system && message.user === who.user;
  const row = document.createElement("li");
  row.className = "message";
  row.classList.toggle("mine", mine);
  row.classList.toggle("system", message.system === true);
  row.classList.toggle("provisional", message.provisional === true);
  row.dataset.id = String(message.id);
  row.dataset.user = message.user;
  row.dataset.ts = String(message.ts);
  if (!message.system) row.append(avatar(message.user));
  row.append(meta(message.user, timeOf(message.ts)), content(message));
  const buttons = [];
  if (mine && !message.provisional) buttons.push(button("edit", "Edit", "Edit message"));
  if ((mine || who.isStaff) && !message.provisional) buttons.push(button("delete", "Delete", "Delete message"));
  if (buttons.length) row.append(actions(buttons));
  return row;
}

// A message typed here: record is { entry, state, error, at } (chat-client.js).
export function pendingRow(record, user) {
  const status = document.createElement("span");
  status.className = "status";
  const row = document.createElement("li");
  row.className = "message pending mine";
  row.dataset.nonce = record.entry.nonce;
  row.dataset.user = user;
  row.dataset.ts = String(Date.now());
  row.append(avatar(user), meta(user, status), content({ text: record.entry.text }));
  updatePendingRow(row, record);
  return row;
}

// The row follows the message's state: waiting, sending, refused for now (with the
// reason, and a Retry that does not wait), or refused for good (Retry, and Discard).
export function updatePendingRow(row, record) {
  const { state, error } = record;
  const failed = state === "failed";
  row.classList.toggle("pending", !failed);
  row.classList.toggle("failed", failed);
  const status = row.querySelector(".status");
  delete status.dataset.until;
  if (state === "queued") status.textContent = "waiting";
  else if (state === "sending") status.textContent = "sending…";
  else if (failed) status.textContent = `not sent: ${describeError(error)}`;
  else if (error.code === "rate_limited" && error.retryAfter !== null) {
    // Counts down to the retry, in whole seconds.
    status.dataset.until = String(record.at + error.retryAfter * 1000);
    tick(status);
  } else status.textContent = describeError(error);

  row.querySelector(".actions")?.remove();
  const buttons = [];
  if (failed && error.code === "too_large") buttons.push(button("revise", "Edit", "Edit this message to shorten it"));
  else if (state === "waiting" || failed) buttons.push(button("retry", "Retry", "Retry sending this message"));
  if (failed) buttons.push(button("discard", "Discard", "Discard this message"));
  if (buttons.length) row.append(actions(buttons));
}

// A rate-limited message's countdown, once a second.
export function tick(status) {
  const left = (Number(status.dataset.until) - Date.now()) / 1000;
  status.textContent = left > 0 ? tooFast(left) : "sending…";
}

function content(message) {
  const text = document.createElement("span");
  text.className = "text";
  // Each text is its own bidi isolate: right-to-left text reads right, and no direction
  // control in one message can reorder anything around it.
  text.dir = "auto";
  appendText(text, message.text);
  const paragraph = document.createElement("p");
  paragraph.className = "content";
  paragraph.append(text);
  if (message.edited) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = "(edited)";
    edited.title = `Edited ${formatFullTime(message.edited)}`;
    paragraph.append(" ", edited);
  }
  return paragraph;
}

// The author's initial on a colour of their own, as a picture would be.
function avatar(user) {
  const element = document.createElement("span");
  element.className = "avatar";
  element.setAttribute("aria-hidden", "true");
  element.textContent = (Array.from(user)[0] ?? "?").toUpperCase();
  let hue = 0;
  for (const character of user) hue = (hue * 31 + character.codePointAt(0)) % 360;
  element.style.setProperty("--hue", String(hue));
  return element;
}

function meta(user, extra) {
  const author = document.createElement("span");
  author.className = "author";
  author.dir = "auto";
  author.textContent = user;
  const header = document.createElement("p");
  header.className = "meta";
  header.append(author, " ", extra);
  return header;
}

function timeOf(ts) {
  const time = document.createElement("time");
  time.className = "time";
  time.dateTime = new Date(ts).toISOString();
  time.textContent = formatTime(ts);
  time.title = formatFullTime(ts);
  return time;
}

function button(action, label, name) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "action";
  element.dataset.action = action;
  element.textContent = label;
  element.setAttribute("aria-label", name);
  return element;
}

function actions(buttons) {
  const group = document.createElement("span");
  group.className = "actions";
  group.append(...buttons);
  return group;
}
