/**
 * Tables for Clerk data synced into Convex.
 *
 * `users` keeps the official template's shape (`name`, `externalId`, index
 * `byExternalId`) so code written against the template keeps working; the extra
 * tables make the sync idempotent and order-tolerant (see sync.ts).
 */
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  users: defineTable({
    externalId: v.string(), // Clerk user id; equals the JWT `subject`
    name: v.string(), // full name, else username, else email, else ""
    email: v.union(v.string(), v.null()),
    phone: v.union(v.string(), v.null()),
    username: v.union(v.string(), v.null()),
    imageUrl: v.union(v.string(), v.null()),
    tokenIdentifier: v.optional(v.string()), // only when the relay knows the issuer
    updatedAt: v.number(), // Clerk's `updated_at` (ms): orders competing updates
  }).index("byExternalId", ["externalId"]),

  organizations: defineTable({
    externalId: v.string(), // Clerk organization id (org_...)
    name: v.string(),
    slug: v.union(v.string(), v.null()),
    imageUrl: v.union(v.string(), v.null()),
    updatedAt: v.number(),
  }).index("byExternalId", ["externalId"]),

  memberships: defineTable({
    externalId: v.string(), // Clerk membership id (orgmem_...)
    orgId: v.string(), // Clerk organization id
    userId: v.string(), // Clerk user id
    role: v.string(), // e.g. "org:admin"
    updatedAt: v.number(),
  })
    .index("byExternalId", ["externalId"])
    .index("byOrgId", ["orgId"])
    .index("byUserId", ["userId"]),

  // One row per applied event (svix-id): a redelivered event becomes a no-op.
  processedEvents: defineTable({
    eventId: v.string(),
    type: v.string(),
    processedAt: v.number(),
  })
    .index("byEventId", ["eventId"])
    .index("byProcessedAt", ["processedAt"]),

  // Clerk never reuses ids, so a deleted id stays dead: a late create/update for
  // it (a retry that lost the race with the delete) must not resurrect it.
  tombstones: defineTable({
    kind: v.union(v.literal("user"), v.literal("organization"), v.literal("membership")),
    externalId: v.string(),
    deletedAt: v.number(), // ms: when the deletion happened (or was applied)
  }).index("byKindAndExternalId", ["kind", "externalId"]),
});
