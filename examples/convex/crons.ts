/** Daily housekeeping (see housekeeping.ts). */
import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";

const crons = cronJobs();
crons.daily(
  "prune processed Clerk event ids",
  { hourUTC: 4, minuteUTC: 17 },
  internal.housekeeping.pruneProcessedEvents,
  {},
);
export default crons;
