/**
 * Housekeeping: `processedEvents` grows by one row per applied event. Clerk retries
 * for about 27 hours and the relay keeps its own record, so ids older than a few
 * weeks can go. Tombstones are small and stay (a deleted Clerk id is dead forever).
 */
import { v } from "convex/values";
import { internal } from "./_generated/api";
import { internalMutation } from "./_generated/server";

/** Rows deleted per transaction; a fuller batch schedules the next one at once. */
const BATCH = 500;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Delete processed-event ids older than `olderThanDays` (default 30). Returns how many. */
export const pruneProcessedEvents = internalMutation({
  args: { olderThanDays: v.optional(v.number()) },
  handler: async (ctx, { olderThanDays = 30 }) => {
    const cutoff = Date.now() - olderThanDays * DAY_MS;
    const old = await ctx.db
      .query("processedEvents")
      .withIndex("byProcessedAt", (q) => q.lt("processedAt", cutoff))
      .take(BATCH);
    await Promise.all(old.map((row) => ctx.db.delete(row._id)));
    if (old.length === BATCH) {
      await ctx.scheduler.runAfter(0, internal.housekeeping.pruneProcessedEvents, {
        olderThanDays,
      });
    }
    return old.length;
  },
});
