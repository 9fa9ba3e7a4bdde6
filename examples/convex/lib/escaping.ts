// The inverse of the relay's key escaping, for your Convex functions.
//
// Convex refuses object keys that start with "$" or "_", are empty, or hold
// characters outside printable ASCII, so the relay escapes such keys (found in
// Clerk's user-chosen metadata) before sending them:
//   "~" -> "~7E", a leading "$" / "_" -> "~24" / "~5F", "" -> "~",
//   other characters -> "~XX" / "~uXXXX" / "~UXXXXXX" (hex code point).
// Store the escaped form (Convex cannot hold the original keys) and call
// unescapeKeys() where you hand metadata to code that expects Clerk's keys,
// e.g. in a query's return value. Mirrors relay/convex_values.py; see
// docs/normalization.md. No imports, so it can be copied anywhere.

const ESCAPE_RE = /~(?:([0-9A-F]{2})|u([0-9A-F]{4})|U([0-9A-F]{6}))/g;

/** The original spelling of one key escaped by the relay. Invalid escapes are kept as they are. */
export function unescapeKey(key: string): string {
  if (key === "~") return "";
  if (!key.includes("~")) return key;
  return key.replace(ESCAPE_RE, (match: string, two?: string, four?: string, six?: string) => {
    const codePoint = parseInt((two ?? four ?? six) as string, 16);
    return codePoint <= 0x10ffff ? String.fromCodePoint(codePoint) : match;
  });
}

/** `value` with every object key, at any depth, passed through unescapeKey. */
export function unescapeKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(unescapeKeys);
  if (value === null || typeof value !== "object") return value;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return value; // ArrayBuffer (v.bytes) etc.
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    // defineProperty, not assignment: an unescaped "__proto__" must stay a plain key.
    Object.defineProperty(out, unescapeKey(key), {
      value: unescapeKeys(item),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}
