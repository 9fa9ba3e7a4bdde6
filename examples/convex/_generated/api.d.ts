/* Typed function references for this folder's modules (stand-in for codegen
 * output). List every module that exports Convex functions here. */
import type { ApiFromModules, FilterApi, FunctionReference } from "convex/server";
import type * as clerkPayload from "../clerkPayload.js";
import type * as crons from "../crons.js";
import type * as housekeeping from "../housekeeping.js";
import type * as http from "../http.js";
import type * as lib_escaping from "../lib/escaping.js";
import type * as orgs from "../orgs.js";
import type * as sync from "../sync.js";
import type * as users from "../users.js";

declare const fullApi: ApiFromModules<{
  clerkPayload: typeof clerkPayload;
  crons: typeof crons;
  housekeeping: typeof housekeeping;
  http: typeof http;
  "lib/escaping": typeof lib_escaping;
  orgs: typeof orgs;
  sync: typeof sync;
  users: typeof users;
}>;

export declare const api: FilterApi<typeof fullApi, FunctionReference<any, "public">>;
export declare const internal: FilterApi<typeof fullApi, FunctionReference<any, "internal">>;
