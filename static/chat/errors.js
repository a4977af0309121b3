// Errors as the protocol reports them (docs/protocol.md). The server says whether a retry
// can help (`retryable`) and sometimes how long to wait first (`retry_after`, seconds).

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
