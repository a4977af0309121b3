// Errors as the protocol reports them (docs/protocol.md), and how a person reads them. The
// server says whether a retry can help (`retryable`) and sometimes how long to wait first
// (`retry_after`, seconds).

export class ChatError extends Error {
  constructor(code, message, { retryable = false, retryAfter = null } = {}) {
    super(message);
    this.code = code;
    this.retryable = retryable;
    this.retryAfter = retryAfter; // seconds, or null when the server gave none
  }

  // From an error frame, or from the `error` object of an HTTP error body.
  static fromWire(fields, retryAfter = null) {
    return new ChatError(fields.code, fields.message, {
      retryable: fields.retryable === true,
      retryAfter: fields.retry_after ?? retryAfter,
    });
  }

  // An HTTP error answer. A proxy in front of the server may answer without our JSON body,
  // and may still say when to come back in the Retry-After header.
  static fromResponse(response, body) {
    const retryAfter = Number(response.headers.get("Retry-After")) || null;
    if (body?.error) return ChatError.fromWire(body.error, retryAfter);
    return new ChatError("unavailable", `the server answered ${response.status}`, {
      retryable: response.status >= 500 || response.status === 429,
      retryAfter,
    });
  }
}

// The request or connection failed before the server answered: worth retrying once the
// connection is back.
export function connectionLost() {
  return new ChatError("connection_lost", "the connection was lost", { retryable: true });
}

// "1 second", "3 seconds": waits are whole seconds, rounded up, so that trying again when
// told never comes too early (the server may say 0.07).
function inSeconds(seconds) {
  const whole = Math.max(1, Math.ceil(seconds));
  return `${whole} ${whole === 1 ? "second" : "seconds"}`;
}

// A send refused by the rate limit, `seconds` (or an unknown time) before it may go.
export function tooFast(seconds) {
  return seconds === null
    ? "you're sending too fast — wait a moment"
    : `you're sending too fast — try again in ${inSeconds(seconds)}`;
}

// Why a message, an edit or a deletion did not go through, in words that say what to do
// (the server's own are terse). They start in lower case, to follow "not sent: "; the page
// capitalises them where they stand alone.
export function describeError(error) {
  switch (error.code) {
    case "rate_limited":
      return tooFast(error.retryAfter);
    case "too_large": {
      // The server's limit, in its message, is the one that counts; the page's may be old.
      const limit = error.message.match(/\d+/)?.[0];
      return limit ? `too long — a message can be at most ${limit} characters` : "too long";
    }
    case "not_allowed":
      return "not allowed — you may change only your own messages, and only for a while after sending them";
    case "not_authenticated":
      return "you're not logged in — log in to post";
    case "banned":
      return "you are banned from this room";
    case "room_closed":
      return "this room is closed";
    case "no_such_message":
      return "that message no longer exists";
    case "connection_lost":
      return "waiting for the connection…";
    case "unavailable":
      return "the server is busy — trying again…";
    default:
      return error.message;
  }
}
