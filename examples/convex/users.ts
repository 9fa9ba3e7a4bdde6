/**
 * Users synced from Clerk: a drop-in for Convex's official Clerk template
 * (same function names, same `users` fields and index, same helpers), made
 * idempotent and order-tolerant (see sync.ts).
 */
import { v } from "convex/values";
import { internalMutation, internalQuery, query, type QueryCtx } from "./_generated/server";
import {
  arr,
  deletedAt,
  incoming,
  outcome,
  requireId,
  str,
  syncArgs,
  versionOf,
  type ClerkData,
  type Incoming,
} from "./clerkPayload";
import {
  claimEvent,
  deleteSynced,
  syncStateArgs,
  syncStatePage,
  syncStatePageOf,
  upsertSynced,
} from "./sync";

/** The signed-in user's row, or null (e.g. before user.created has arrived). */
export const current = query({
  args: {},
  handler: async (ctx) => await getCurrentUser(ctx),
});

/** user.created / user.updated. Args: `{data}` (template), `{event}` (normalized), optional `eventId`. */
export const upsertFromClerk = internalMutation({
  args: syncArgs,
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "user.updated"))) return "duplicate";
    return await upsertSynced(ctx, "users", "user", userFields(event, Date.now()));
  },
});

/** user.deleted. Args: `{clerkUserId}` (template), `{event}` or `{data}`, optional `eventId`. */
export const deleteFromClerk = internalMutation({
  args: { ...syncArgs, clerkUserId: v.optional(v.string()) },
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "user.deleted"))) return "duplicate";
    const userId = requireId(args.clerkUserId ?? event.entityId, "users:deleteFromClerk");
    // Clerk sends no per-membership events when a user goes, so clean up here.
    const memberships = await ctx.db
      .query("memberships")
      .withIndex("byUserId", (q) => q.eq("userId", userId))
      .collect();
    await Promise.all(memberships.map((m) => ctx.db.delete(m._id)));
    return await deleteSynced(ctx, "users", "user", userId, deletedAt(event, Date.now()));
  },
});

/** Every synced user's Clerk id and version, a page at a time: what `relay reconcile` compares with Clerk. */
export const syncState = internalQuery({
  args: syncStateArgs,
  returns: syncStatePage,
  handler: async (ctx, { paginationOpts }) => await syncStatePageOf(ctx, "users", paginationOpts),
});

export async function getCurrentUserOrThrow(ctx: QueryCtx) {
  const user = await getCurrentUser(ctx);
  if (user === null) throw new Error("Can't get current user");
  return user;
}

export async function getCurrentUser(ctx: QueryCtx) {
  const identity = await ctx.auth.getUserIdentity();
  if (identity === null) return null;
  return await userByExternalId(ctx, identity.subject);
}

export async function userByExternalId(ctx: QueryCtx, externalId: string) {
  return await ctx.db
    .query("users")
    .withIndex("byExternalId", (q) => q.eq("externalId", externalId))
    .unique();
}

/**
 * The stored fields only: Clerk's metadata may hold keys Convex rejects (`$...`),
 * and private metadata does not belong in a client-readable table.
 */
function userFields(event: Incoming, now: number) {
  const { data } = event;
  const username = str(data, "username");
  // Normalized events carry `email`/`phone`/`name` ready-made; raw ones need
  // the primary address looked up and the name assembled (never "null null").
  const email =
    str(data, "email") ?? primaryValue(data, "email_addresses", "primary_email_address_id", "email_address");
  const phone =
    str(data, "phone") ?? primaryValue(data, "phone_numbers", "primary_phone_number_id", "phone_number");
  const fullName =
    str(data, "name") ??
    ([str(data, "first_name"), str(data, "last_name")].filter(Boolean).join(" ") || null);
  const tokenIdentifier = str(data, "token_identifier");
  return {
    externalId: requireId(event.entityId, "users:upsertFromClerk"),
    name: fullName ?? username ?? email ?? "",
    email,
    phone,
    username,
    imageUrl: str(data, "image_url"),
    ...(tokenIdentifier === null ? {} : { tokenIdentifier }),
    updatedAt: versionOf(event, now),
  };
}

/** The value of the entry in `data[list]` whose id is `data[primaryIdField]`. */
function primaryValue(data: ClerkData, list: string, primaryIdField: string, valueField: string) {
  const primaryId = str(data, primaryIdField);
  const primary = arr(data, list).find((item) => str(item, "id") === primaryId);
  return primaryId === null || primary === undefined ? null : str(primary, valueField);
}
