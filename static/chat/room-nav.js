// The rooms this person may read, beside the messages: the room on screen marked, and how
// many messages came in each of the others while it was not on screen. On a phone the list
// is a drawer that its button opens over the page.

export class RoomNav {
  // parts: { nav, list, toggle, close }; open(id): show that room; urlOf(id): its address
  constructor(parts, { open, urlOf }) {
    Object.assign(this, parts);
    this.open = open;
    this.urlOf = urlOf;
    this.toggle.addEventListener("click", () => this.setDrawer(!this.isDrawerOpen()));
    this.close.addEventListener("click", () => {
      this.setDrawer(false);
      this.toggle.focus();
    });
    this.nav.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isDrawerOpen()) {
        this.setDrawer(false);
        this.toggle.focus();
      }
    });
    // The open drawer closes when focus or a tap goes elsewhere (but its own button
    // toggles it).
    this.nav.addEventListener("focusout", (event) => {
      const to = event.relatedTarget;
      if (this.isDrawerOpen() && to && !this.nav.contains(to) && !this.toggle.contains(to)) this.setDrawer(false);
    });
    document.addEventListener("click", (event) => {
      if (this.isDrawerOpen() && !this.nav.contains(event.target) && !this.toggle.contains(event.target)) {
        this.setDrawer(false);
      }
    });
    this.list.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-room-id]");
      // A click that asks for a new tab or window is the browser's.
      if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      this.setDrawer(false);
      this.open(Number(link.dataset.roomId));
    });
  }

  isDrawerOpen() {
    return this.nav.classList.contains("open");
  }

  setDrawer(open) {
    this.nav.classList.toggle("open", open);
    this.toggle.setAttribute("aria-expanded", String(open));
    if (open) (this.nav.querySelector("a[aria-current]") ?? this.close).focus();
  }

  // rooms: the RoomStates in list order; current: the one on screen. Items are updated in
  // place, so that a link keeps the keyboard's focus while counts change around it.
  show(rooms, current) {
    const unread = rooms.reduce((sum, room) => sum + (room === current ? 0 : room.unread), 0);
    this.toggle.dataset.unread = String(unread);
    const items = new Map([...this.list.children].map((item) => [item.dataset.roomId, item]));
    rooms.forEach((room, index) => {
      const item = items.get(String(room.id)) ?? this.item(room.id);
      items.delete(String(room.id));
      this.fill(item.firstElementChild, room, room === current);
      if (this.list.children[index] !== item) this.list.insertBefore(item, this.list.children[index] ?? null);
    });
    for (const gone of items.values()) gone.remove();
  }

  item(id) {
    const link = document.createElement("a");
    link.href = this.urlOf(id);
    link.dataset.roomId = String(id);
    const item = document.createElement("li");
    item.className = "room-item";
    item.dataset.roomId = String(id);
    item.append(link);
    return item;
  }

  fill(link, room, isCurrent) {
    if (isCurrent) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
    const name = document.createElement("span");
    name.className = "name";
    name.dir = "auto";
    name.textContent = room.name || `Room ${room.id}`;
    const parts = [name];
    if (room.isPrivate) parts.push(badge("private", "private"));
    if (room.ended) parts.push(badge("closed", "unavailable"));
    if (room.unread && !isCurrent) {
      const count = badge("unread", String(room.unread));
      count.dataset.count = String(room.unread);
      // Read as "Second 3 unread messages" rather than "Second 3".
      const words = document.createElement("span");
      words.className = "visually-hidden";
      words.textContent = room.unread === 1 ? " unread message" : " unread messages";
      count.append(words);
      parts.push(count);
    }
    link.replaceChildren(...parts);
  }
}

function badge(kind, text) {
  const element = document.createElement("span");
  element.className = `room-badge room-badge-${kind}`;
  element.textContent = text;
  return element;
}
