/**
 * What makes the sync idempotent and order-tolerant, shared by users.ts and
 * orgs.ts. Everything here runs inside the calling mutation, so the dedupe
 * check, the tombstone check and the write commit (or roll back) together.
 */
import { paginationOptsValidator, type PaginationOptions, type WithoutSystemFields } from "convex/server";
import { v } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import type { MutationCtx, QueryCtx } from "./_generated/server";
import type { Incoming, Outcome } from "./clerkPayload";

type Kind = Doc<"tombstones">["kind"];
type SyncedTable = "users" | "organizations" | "memberships";
type SyncedFields = WithoutSystemFields<Doc<SyncedTable>>;

/**
 * Records the event id; false if it was recorded before (a redelivery). Events
 * without an id (template-style `{data}` args) cannot be de-duplicated, but the
 * version check and tombstones still keep replays harmless.
 */
export async function claimEvent(
  ctx: MutationCtx,
  event: Incoming,
  fallbackType: string,
): Promise<boolean> {
  const { eventId } = event;
  if (eventId === null) return true;
  const seen = await ctx.db
    .query("processedEvents")
    .withIndex("byEventId", (q) => q.eq("eventId", eventId))
    .first();
  if (seen !== null) return false;
  await ctx.db.insert("processedEvents", {
    eventId,
    type: event.type ?? fallbackType,
    processedAt: Date.now(),
  });
  return true;
}

export async function isDeleted(ctx: MutationCtx, kind: Kind, externalId: string) {
  const tombstone = await ctx.db
    .query("tombstones")
    .withIndex("byKindAndExternalId", (q) => q.eq("kind", kind).eq("externalId", externalId))
    .first();
  return tombstone !== null;
}

/**
 * Inserts or updates the row for `fields.externalId` unless the entity was
 * deleted before or the stored row is newer (an older event arriving late).
 */
export async function upsertSynced(
  ctx: MutationCtx,
  table: SyncedTable,
  kind: Kind,
  fields: SyncedFields,
): Promise<Outcome> {
  if (await isDeleted(ctx, kind, fields.externalId)) return "tombstoned";
  const existing = await findSynced(ctx, table, fields.externalId);
  if (existing === null) {
    await ctx.db.insert(table, fields as never);
    return "inserted";
  }
  // Equal versions are applied: same-millisecond updates are rare, and the
  // event-id check already filters true duplicates.
  if (fields.updatedAt < existing.updatedAt) return "stale";
  await ctx.db.replace(existing._id, fields as never);
  return "updated";
}

/** Deletes the row (if any) and leaves a tombstone so it cannot come back. */
export async function deleteSynced(
  ctx: MutationCtx,
  table: SyncedTable,
  kind: Kind,
  externalId: string,
  deletedAt: number,
): Promise<Outcome> {
  if (!(await isDeleted(ctx, kind, externalId))) {
    await ctx.db.insert("tombstones", { kind, externalId, deletedAt });
  }
  const existing = await findSynced(ctx, table, externalId);
  if (existing === null) return "not_found";
  await ctx.db.delete(existing._id);
  return "deleted";
}

async function findSynced(
  ctx: MutationCtx,
  table: SyncedTable,
  externalId: string,
): Promise<Doc<SyncedTable> | null> {
  // The three synced tables share the `byExternalId` index, but TypeScript cannot
  // see that through a union of table names; the casts (here and in upsertSynced)
  // only silence that, the schema still validates every write at runtime.
  return await ctx.db
    .query(table as "users")
    .withIndex("byExternalId", (q) => q.eq("externalId", externalId))
    .unique();
}

/** Args of the `*SyncState` queries: Convex's standard pagination options. */
export const syncStateArgs = { paginationOpts: paginationOptsValidator };

/** One synced row as `relay reconcile` compares it with Clerk. */
export const syncStateRow = v.object({
  clerkId: v.string(),
  updatedAt: v.number(), // Clerk's `updated_at` (ms) of the stored version
  deleted: v.boolean(), // true for a soft-deleted row (treated as absent)
  orgId: v.optional(v.string()), // memberships: the organization, to confirm a removal
});

/** A page of `syncStateRow`s, in the shape of Convex's own pagination results. */
export const syncStatePage = v.object({
  page: v.array(syncStateRow),
  isDone: v.boolean(),
  continueCursor: v.string(),
});

/**
 * One page of a synced table for `relay reconcile` (called on /api/query with
 * a deploy key): just the Clerk id and version of each row, so a page of
 * thousands of rows stays far below Convex's read limits.
 */
export async function syncStatePageOf(
  ctx: QueryCtx,
  table: SyncedTable,
  paginationOpts: PaginationOptions,
) {
  const result = await ctx.db
    .query(table as "memberships")
    .withIndex("byExternalId")
    .paginate(paginationOpts);
  return {
    page: result.page.map((row) => ({
      clerkId: row.externalId,
      updatedAt: row.updatedAt,
      deleted: false, // this schema deletes rows (and keeps a tombstone)
      ...(table === "memberships" ? { orgId: row.orgId } : {}),
    })),
    isDone: result.isDone,
    continueCursor: result.continueCursor,
  };
}
