// The room page: renders what the ChatClient delivers. Text is only ever set with
// textContent, so a message is shown as what it is, never run as HTML.

import { ChatClient } from "./chat-client.js";

const root = document.getElementById("chat");
const list = document.getElementById("messages");
const stateLabel = document.getElementById("connection-state");
const errorBox = document.getElementById("error");
const form = document.getElementById("send-form");
const input = document.getElementById("message-input");

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function renderMessage(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = String(message.id);
  if (message.user === root.dataset.username) item.classList.add("mine");

  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.user;

  const when = new Date(message.ts);
  const time = document.createElement("time");
  time.className = "time";
  time.dateTime = when.toISOString();
  time.textContent = timeFormat.format(when);

  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;

  item.append(author, " ", time, " ", text);
  return item;
}

function showError(error) {
  errorBox.textContent = error ? error.message : "";
  errorBox.hidden = !error;
}

const client = new ChatClient({
  room: root.dataset.roomId,
  transport: root.dataset.transport,
  wsPath: root.dataset.wsPath,
  pollPath: root.dataset.pollPath,
  handlers: {
    onMessages(messages) {
      const stick = nearBottom();
      const fragment = document.createDocumentFragment();
      for (const message of messages) fragment.append(renderMessage(message));
      list.append(fragment);
      if (stick) list.scrollTop = list.scrollHeight;
    },
    onDeleted(id) {
      list.querySelector(`li.message[data-id="${Number(id)}"]`)?.remove();
    },
    onState(state) {
      stateLabel.textContent = state;
      stateLabel.dataset.state = state;
    },
    onError: showError,
  },
});

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  try {
    await client.send(text);
    showError(null);
  } catch (error) {
    input.value = text;
    showError(error);
  }
});

client.start();
list.scrollTop = list.scrollHeight;
