// Reproduction of Convex's official Clerk demo users module (see README.md):
// intentionally last-write-wins and without tombstones.
import { v, type Validator } from "convex/values";
import { internalMutation, query, type QueryCtx } from "./_generated/server";

/** The subset of Clerk's UserJSON the demo reads (stands in for @clerk/backend). */
type ClerkUser = { id: string; first_name: string | null; last_name: string | null };

export const current = query({
  args: {},
  handler: async (ctx) => await getCurrentUser(ctx),
});

export const upsertFromClerk = internalMutation({
  args: { data: v.any() as Validator<ClerkUser> }, // trusted, not validated at runtime
  handler: async (ctx, { data }) => {
    const attributes = { name: `${data.first_name} ${data.last_name}`, externalId: data.id };
    const user = await userByExternalId(ctx, data.id);
    if (user === null) {
      await ctx.db.insert("users", attributes);
    } else {
      await ctx.db.patch(user._id, attributes);
    }
  },
});

export const deleteFromClerk = internalMutation({
  args: { clerkUserId: v.string() },
  handler: async (ctx, { clerkUserId }) => {
    const user = await userByExternalId(ctx, clerkUserId);
    if (user === null) {
      console.warn(`No user to delete for Clerk user id ${clerkUserId}`);
    } else {
      await ctx.db.delete(user._id);
    }
  },
});

export async function getCurrentUserOrThrow(ctx: QueryCtx) {
  const user = await getCurrentUser(ctx);
  if (user === null) throw new Error("Can't get current user");
  return user;
}

export async function getCurrentUser(ctx: QueryCtx) {
  const identity = await ctx.auth.getUserIdentity();
  return identity === null ? null : await userByExternalId(ctx, identity.subject);
}

async function userByExternalId(ctx: QueryCtx, externalId: string) {
  return await ctx.db
    .query("users")
    .withIndex("byExternalId", (q) => q.eq("externalId", externalId))
    .unique();
}
