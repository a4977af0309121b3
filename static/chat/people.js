// Who is in the room on screen, and who is typing there. The list sits in a side panel on
// wide screens, and on narrower ones folds away behind its button.

import { typingPhrase } from "./format.js";

// Below this width the panel would squeeze the messages (chat.css folds it too).
const NARROW = matchMedia("(max-width: 1000px)");

export class PeoplePanel {
  // parts: { panel, list, toggle, count }
  constructor(parts) {
    Object.assign(this, parts);
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    // On a phone the open panel covers the messages: Escape folds it.
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && NARROW.matches && !this.panel.hidden) {
        this.setOpen(false);
        this.toggle.focus();
      }
    });
    // Open beside the messages when there is room for it; folded on a phone.
    NARROW.addEventListener("change", () => this.setOpen(!NARROW.matches));
    this.setOpen(!NARROW.matches);
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
  }

  // room: a RoomState; me: our username, listed first.
  show(room, me) {
    const names = [...room.present].sort((a, b) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
    this.list.replaceChildren(
      ...names.map((name) => {
        const item = document.createElement("li");
        const label = document.createElement("span");
        label.dir = "auto";
        label.textContent = name;
        item.append(label);
        if (name === me) item.append(" (you)");
        return item;
      }),
    );
    if (!names.length) {
      const item = document.createElement("li");
      item.className = "nobody";
      item.textContent = "No one is here right now.";
      this.list.append(item);
    }
    this.count.textContent = String(names.length);
  }
}

export function showTyping(line, room) {
  line.textContent = typingPhrase(room.typists());
}
