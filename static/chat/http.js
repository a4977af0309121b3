// JSON over HTTP, as every endpoint of the chat answers it (docs/protocol.md): failures
// become a ChatError that says whether to retry.

import { ChatError, connectionLost } from "./errors.js";

// Read at every request: logging in rotates the token.
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// One request; network failures and deadlines become a retryable ChatError.
export async function requestJson(url, options) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...options });
  } catch {
    throw connectionLost();
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw ChatError.fromResponse(response, body);
  if (body === null) throw connectionLost(); // the answer was cut short
  return body;
}

export function postJson(url, body, timeoutMs) {
  return requestJson(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
}
