// Reproduction of Convex's official Clerk demo schema (see README.md).
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  users: defineTable({
    name: v.string(),
    externalId: v.string(), // Clerk user id
  }).index("byExternalId", ["externalId"]),
  messages: defineTable({
    body: v.string(),
    userId: v.id("users"),
  }).index("byUserId", ["userId"]),
});
