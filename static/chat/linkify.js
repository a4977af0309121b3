// A message's text as DOM nodes: plain text, and http(s) addresses as links. Nothing in a
// message is ever parsed as HTML; a link is made only from an address whose scheme is
// checked, so `javascript:` and the like stay text.

// An address runs to the next white space; the punctuation that usually ends a sentence
// after it is left out below.
const ADDRESS = /\bhttps?:\/\/[^\s<>"]+/gi;
const TRAILING = /[.,;:!?'"*_~\]}>]+$/;

export function appendText(parent, text) {
  let done = 0;
  for (const match of text.matchAll(ADDRESS)) {
    const address = trimAddress(match[0]);
    const link = makeLink(address);
    if (!link) continue;
    parent.append(text.slice(done, match.index), link);
    done = match.index + address.length;
  }
  parent.append(text.slice(done));
}

// Trailing punctuation belongs to the sentence, and a closing parenthesis too unless the
// address opened one (as Wikipedia's do).
function trimAddress(address) {
  for (;;) {
    const trimmed = address.replace(TRAILING, "");
    const opens = (trimmed.match(/\(/g) ?? []).length;
    const closes = (trimmed.match(/\)/g) ?? []).length;
    const next = trimmed.endsWith(")") && closes > opens ? trimmed.slice(0, -1) : trimmed;
    if (next === address) return address;
    address = next;
  }
}

function makeLink(address) {
  let url;
  try {
    url = new URL(address);
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  const link = document.createElement("a");
  link.href = url.href;
  link.textContent = address;
  link.target = "_blank";
  link.rel = "noopener noreferrer nofollow ugc";
  return link;
}
