/**
 * Organizations and organization memberships synced from Clerk, with the same
 * guarantees as users.ts (event-id dedupe, newest `updated_at` wins, deletion
 * tombstones). Every function takes `{data}` (raw Clerk data) or `{event}`
 * (normalized), plus an optional `eventId`.
 *
 * Relay mutation-target routes (RELAY_ROUTES, one line):
 *   organization.created,organization.updated=orgs:upsertOrganization;
 *   organization.deleted=orgs:deleteOrganization;
 *   organizationMembership.created,organizationMembership.updated=orgs:upsertMembership;
 *   organizationMembership.deleted=orgs:deleteMembership
 */
import { internalMutation, internalQuery } from "./_generated/server";
import {
  deletedAt,
  incoming,
  obj,
  outcome,
  requireId,
  str,
  syncArgs,
  versionOf,
} from "./clerkPayload";
import {
  claimEvent,
  deleteSynced,
  isDeleted,
  syncStateArgs,
  syncStatePage,
  syncStatePageOf,
  upsertSynced,
} from "./sync";

/** organization.created / organization.updated */
export const upsertOrganization = internalMutation({
  args: syncArgs,
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "organization.updated"))) return "duplicate";
    const { data } = event;
    return await upsertSynced(ctx, "organizations", "organization", {
      externalId: requireId(event.entityId, "orgs:upsertOrganization"),
      name: str(data, "name") ?? "",
      slug: str(data, "slug"),
      imageUrl: str(data, "image_url"),
      updatedAt: versionOf(event, Date.now()),
    });
  },
});

/** organization.deleted: also drops the org's memberships (Clerk may not send one event per member). */
export const deleteOrganization = internalMutation({
  args: syncArgs,
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "organization.deleted"))) return "duplicate";
    const orgId = requireId(event.entityId, "orgs:deleteOrganization");
    const memberships = await ctx.db
      .query("memberships")
      .withIndex("byOrgId", (q) => q.eq("orgId", orgId))
      .collect();
    await Promise.all(memberships.map((m) => ctx.db.delete(m._id)));
    return await deleteSynced(ctx, "organizations", "organization", orgId, deletedAt(event, Date.now()));
  },
});

/** organizationMembership.created / organizationMembership.updated */
export const upsertMembership = internalMutation({
  args: syncArgs,
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "organizationMembership.updated"))) return "duplicate";
    const { data } = event;
    const orgId = requireId(str(obj(data, "organization"), "id"), "orgs:upsertMembership (organization.id)");
    const userId = requireId(str(obj(data, "public_user_data"), "user_id"), "orgs:upsertMembership (public_user_data.user_id)");
    // A late membership event must not re-attach a deleted user or organization.
    if ((await isDeleted(ctx, "organization", orgId)) || (await isDeleted(ctx, "user", userId))) {
      return "tombstoned";
    }
    return await upsertSynced(ctx, "memberships", "membership", {
      externalId: requireId(event.entityId, "orgs:upsertMembership"),
      orgId,
      userId,
      role: str(data, "role") ?? "",
      updatedAt: versionOf(event, Date.now()),
    });
  },
});

/** organizationMembership.deleted */
export const deleteMembership = internalMutation({
  args: syncArgs,
  returns: outcome,
  handler: async (ctx, args) => {
    const event = incoming(args);
    if (!(await claimEvent(ctx, event, "organizationMembership.deleted"))) return "duplicate";
    const id = requireId(event.entityId, "orgs:deleteMembership");
    return await deleteSynced(ctx, "memberships", "membership", id, deletedAt(event, Date.now()));
  },
});

/** Organizations' Clerk ids and versions, a page at a time (for `relay reconcile`). */
export const organizationSyncState = internalQuery({
  args: syncStateArgs,
  returns: syncStatePage,
  handler: async (ctx, { paginationOpts }) =>
    await syncStatePageOf(ctx, "organizations", paginationOpts),
});

/** Memberships' Clerk ids, versions and organizations, a page at a time (for `relay reconcile`). */
export const membershipSyncState = internalQuery({
  args: syncStateArgs,
  returns: syncStatePage,
  handler: async (ctx, { paginationOpts }) =>
    await syncStatePageOf(ctx, "memberships", paginationOpts),
});
