// Times and days as the reader's own locale and time zone show them (Intl), and the few
// phrases the page builds from counts.

const timeOfDay = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const dayThisYear = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayOtherYear = new Intl.DateTimeFormat(undefined, { dateStyle: "full" });

export function formatTime(ts) {
  return timeOfDay.format(ts);
}

export function formatFullTime(ts) {
  return fullTime.format(ts);
}

// Local midnight of the day `ts` falls on: two times share a day when their keys are equal.
export function dayKey(ts) {
  const date = new Date(ts);
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

export function dayLabel(ts, now = Date.now()) {
  const day = dayKey(ts);
  const today = dayKey(now);
  if (day === today) return "Today";
  // The day before today's midnight: right across daylight-saving changes too.
  if (day === dayKey(today - 1)) return "Yesterday";
  const sameYear = new Date(ts).getFullYear() === new Date(now).getFullYear();
  return (sameYear ? dayThisYear : dayOtherYear).format(ts);
}

// Milliseconds until the next local midnight, when "Today" and "Yesterday" move on.
export function untilMidnight(now = Date.now()) {
  const date = new Date(now);
  return new Date(date.getFullYear(), date.getMonth(), date.getDate() + 1).getTime() - now;
}

export function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

// "alice is typing…", "alice and bob are typing…", "several people are typing…"
export function typingPhrase(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "several people are typing…";
}
