/* Typed function references (stand-in for codegen output, see server.js). */
import type { ApiFromModules, FilterApi, FunctionReference } from "convex/server";
import type * as http from "../http.js";
import type * as users from "../users.js";

declare const fullApi: ApiFromModules<{
  http: typeof http;
  users: typeof users;
}>;

export declare const api: FilterApi<typeof fullApi, FunctionReference<any, "public">>;
export declare const internal: FilterApi<typeof fullApi, FunctionReference<any, "internal">>;
