// Which rooms an HTTP receiver carries, and how GET /poll and GET /stream ask for them: the
// one place that knows the query format (docs/protocol.md).
//
// A receiver carries a set of (room, since) pairs, `link.cursors()`, the room on screen
// first; `since` is null until the page knows a place in the room. One room is asked for as
// `room=1&since=5`, which every server understands; several in one request as
// `rooms=1:5,2:7,3` (a room without a place gets its latest messages). A server that does
// not know `rooms=` on an endpoint refuses it: from then on that receiver carries the room
// on screen only, and other rooms are read when they are opened.

import { requestJson } from "./http.js";

export class RoomQuery {
  constructor(link, pollPath) {
    this.link = link;
    this.pollPath = pollPath;
    this.several = true;
  }

  // The pairs the next request carries.
  cursors() {
    const all = this.link.cursors();
    return this.several ? all : all.slice(0, 1);
  }

  url(path, cursors, extra = {}) {
    const params = new URLSearchParams(extra);
    if (cursors.length === 1) {
      const [[room, since]] = cursors;
      params.set("room", room);
      if (since !== null) params.set("since", since);
    } else {
      params.set("rooms", cursors.map(([room, since]) => (since === null ? room : `${room}:${since}`)).join(","));
    }
    return `${path}?${params}`;
  }

  // From now on, ask for the room on screen only. False when that was so already.
  askOneAtATime(asked) {
    if (!this.several || asked.length < 2) return false;
    this.several = false;
    return true;
  }

  // A request for `asked` was refused for good (`error` is not retryable). Tells the link
  // what it means, and resolves to true when asking again, for what is left, can work.
  async refused(error, asked) {
    if (error.code === "disconnected") {
      this.link.ended(error); // a moderator ended this connection
      return false;
    }
    if (error.code === "bad_request" && this.askOneAtATime(asked)) return true;
    if (asked.length === 1) {
      this.link.roomEnded(asked[0][0], error);
      return true;
    }
    // Which room? Ask for each on its own, with polls that answer at once.
    let found = false;
    for (const [room, since] of asked) {
      try {
        await requestJson(this.url(this.pollPath, [[room, since]], { timeout: 0 }), {
          signal: AbortSignal.timeout(10_000),
        });
      } catch (roomError) {
        if (roomError.retryable) throw roomError;
        this.link.roomEnded(room, roomError);
        found = true;
      }
    }
    if (!found) this.link.ended(error); // no room is to blame: the request itself is refused
    return found;
  }
}

// A GET /poll answer, for one room or several: an entry per room.
export function pollEntries(body) {
  return body.rooms ?? [body];
}
