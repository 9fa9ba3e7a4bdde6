/**
 * Reading Clerk payloads in every shape they reach Convex:
 *
 * - the official template's args (`{data}` / `{clerkUserId}`): Clerk's `data`,
 *   snake_case, as the relay sends with RELAY_PAYLOAD=raw;
 * - a relay-normalized event (`{event}`): camelCase `data`, Convex-safe keys,
 *   as the relay sends with RELAY_PAYLOAD=normalized, and as http.ts builds for
 *   every request it accepts.
 *
 * Field readers accept both casings so the sync code below has one path.
 */
import { ConvexError, v, type Infer } from "convex/values";

/** The relay's normalized event (CONTRACT.md, "Normalized event"). */
export const normalizedEvent = v.object({
  id: v.string(), // svix-id: the event's identity across retries and replays
  type: v.string(),
  occurredAt: v.number(), // ms
  instanceId: v.union(v.string(), v.null()),
  object: v.union(v.string(), v.null()), // null when Clerk's data has no `object`
  entityId: v.union(v.string(), v.null()),
  data: v.any(),
  eventAttributes: v.optional(v.any()), // only if the relay was asked to include it
});
export type NormalizedEvent = Infer<typeof normalizedEvent>;

/** Args every sync mutation accepts (each field optional: either shape works). */
export const syncArgs = {
  data: v.optional(v.any()), // template / raw mode: Clerk's `data` as is
  event: v.optional(normalizedEvent), // normalized mode and http.ts
  eventId: v.optional(v.string()), // svix-id when only `data` is sent, to enable de-duplication
};

/** What a sync mutation did; returned so callers (and tests) can see it. */
export const outcome = v.union(
  v.literal("inserted"),
  v.literal("updated"),
  v.literal("deleted"),
  v.literal("not_found"), // delete of something never stored (still tombstoned)
  v.literal("duplicate"), // this event id was applied before
  v.literal("stale"), // older than what is stored
  v.literal("tombstoned"), // the entity was deleted earlier
);
export type Outcome = Infer<typeof outcome>;

export type ClerkData = Record<string, unknown>;

/** One event, whichever shape it came in. */
export interface Incoming {
  eventId: string | null;
  type: string | null;
  occurredAt: number | null;
  entityId: string | null;
  data: ClerkData;
}

export function incoming(args: {
  data?: unknown;
  event?: NormalizedEvent;
  eventId?: string;
}): Incoming {
  if (args.event !== undefined) {
    const { event } = args;
    return {
      eventId: args.eventId ?? event.id,
      type: event.type,
      occurredAt: event.occurredAt,
      entityId: event.entityId,
      data: asObject(event.data),
    };
  }
  const data = asObject(args.data);
  return {
    eventId: args.eventId ?? null,
    type: null,
    occurredAt: null,
    entityId: str(data, "id"),
    data,
  };
}

/** Clerk's field `snake` from raw (snake_case) or normalized (camelCase) data. */
export function field(data: ClerkData, snake: string): unknown {
  return snake in data ? data[snake] : data[camelCase(snake)];
}

export function str(data: ClerkData, snake: string): string | null {
  const value = field(data, snake);
  return typeof value === "string" ? value : null;
}

export function num(data: ClerkData, snake: string): number | null {
  const value = field(data, snake);
  return typeof value === "number" ? value : null;
}

export function obj(data: ClerkData, snake: string): ClerkData {
  return asObject(field(data, snake));
}

/** Clerk documents ms timestamps, but its own examples use seconds: go by magnitude. */
export function toMs(timestamp: number): number {
  return timestamp < 1e12 ? timestamp * 1000 : timestamp;
}

/**
 * The version used to order competing writes: Clerk's `updated_at`. Deletions
 * and odd payloads without it fall back to when the event happened.
 */
export function versionOf(event: Incoming, now: number): number {
  return num(event.data, "updated_at") ?? event.occurredAt ?? now;
}

/** When a deletion happened: the event's time if known, else now. */
export function deletedAt(event: Incoming, now: number): number {
  return event.occurredAt ?? now;
}

/** The entity id an event is about; an event without one cannot be applied. */
export function requireId(id: string | null, what: string): string {
  if (id === null || id === "") {
    throw new ConvexError(`${what}: the event carries no entity id`);
  }
  return id;
}

/** The objects in list field `snake` (anything else in it is ignored). */
export function arr(data: ClerkData, snake: string): ClerkData[] {
  const value = field(data, snake);
  return Array.isArray(value) ? value.map(asObject) : [];
}

function asObject(value: unknown): ClerkData {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as ClerkData)
    : {};
}

function camelCase(snake: string): string {
  return snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
