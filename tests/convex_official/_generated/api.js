/* Hand-written stand-in for codegen output: `anyApi` builds a function reference
 * for any property path (`internal.users.upsertFromClerk` -> "users:upsertFromClerk"),
 * which is all the generated runtime file does. */
import { anyApi } from "convex/server";

export const api = anyApi;
export const internal = anyApi;
