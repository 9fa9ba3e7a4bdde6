/**
 * Convex's function HTTP API (`/api/query|mutation|action`, `/api/run/...`) on
 * top of convex-test, with the semantics convex-test lacks: admin-key checks,
 * public/internal visibility, the function-type check, the `{status, value |
 * errorMessage}` envelope, and the `format` output modes. Reference:
 * docs/reference/convex.md §1 and §2.
 */
import { makeFunctionReference } from "convex/server";
import { convexToJson, jsonToConvex, type JSONValue, type Value } from "convex/values";
import type { TestConvex } from "convex-test";
import { kindOf, type FunctionKind, type FunctionsFolder } from "./functions.ts";

/** A convex-test deployment (possibly acting as a user, via withIdentity). */
export type Backend = Pick<TestConvex<never>, "query" | "mutation" | "action">;

export interface Reply {
  status: number;
  body: unknown;
}

export type Caller = { kind: "admin" } | { kind: "user"; backend: Backend } | { kind: "anonymous" };

let requestCounter = 0;
export function nextRequestId(): string {
  return (++requestCounter).toString(16).padStart(16, "0");
}

/** Errors that are transport errors in Convex: a non-200 with `{code, message}`. */
export function transportError(status: number, code: string, message: string): Reply {
  return { status, body: { code, message } };
}

/**
 * Runs one call. `kind` is the endpoint's function type, or "any" for /api/run.
 * `body` is the parsed JSON request body.
 */
export async function callFunction(
  folder: FunctionsFolder,
  backend: Backend,
  caller: Caller,
  kind: FunctionKind | "any",
  udfPathRaw: unknown,
  body: Record<string, unknown>,
): Promise<Reply> {
  if (typeof udfPathRaw !== "string" || udfPathRaw === "") {
    return transportError(400, "BadJsonBody", "Missing field `path`");
  }
  if (!("args" in body)) return transportError(400, "BadJsonBody", "Missing field `args`");
  const format = body.format ?? "json";
  if (!["json", "convex_clean_json", "convex_encoded_json", "convex_json"].includes(String(format))) {
    return transportError(400, "BadFormat", `Invalid format: ${String(format)}`);
  }
  // Convex accepts "module.js:fn" and "module:fn"; a bare module means its default export.
  const udfPath = udfPathRaw.replace(/\.js(?=:|$)/, "");
  const requestId = nextRequestId();
  const error = (message: string, errorData?: unknown): Reply => ({
    status: 200,
    body: errorData === undefined ? { status: "error", errorMessage: message } : { status: "error", errorMessage: message, errorData },
  });

  const fn = await folder.lookup(udfPath);
  const admin = caller.kind === "admin";
  if (fn === null || (fn.isInternal && !admin)) {
    return error(
      admin
        ? `Could not find function for '${udfPath}'. Did you forget to run \`npx convex dev\` or \`npx convex deploy\`?`
        : `Could not find public function for '${udfPath}'. Did you forget to run \`npx convex dev\` or \`npx convex deploy\`?`,
    );
  }
  const actual = kindOf(fn);
  if (kind !== "any" && kind !== actual) {
    return error(`Trying to execute ${udfPath} as ${title(kind)}, but it is defined as ${title(actual)}.`);
  }

  let args: Value;
  try {
    // A one-element array is the legacy positional form the JS client still sends.
    const raw = Array.isArray(body.args) && body.args.length === 1 ? body.args[0] : body.args;
    args = jsonToConvex(raw as JSONValue);
    if (typeof args !== "object" || args === null || Array.isArray(args)) throw new Error("args must be an object");
  } catch (e) {
    return error(`Invalid arguments for '${udfPath}': ${(e as Error).message}`);
  }

  const run = caller.kind === "user" ? caller.backend : backend;
  try {
    const value =
      actual === "query"
        ? await run.query(makeFunctionReference<"query">(udfPath), args)
        : actual === "mutation"
          ? await run.mutation(makeFunctionReference<"mutation">(udfPath), args)
          : await run.action(makeFunctionReference<"action">(udfPath), args);
    return { status: 200, body: { status: "success", value: exportValue(value as Value, String(format)) } };
  } catch (e) {
    const err = e as Error & { data?: unknown };
    // convex-test validates args inside the call; Convex reports those without
    // the "Server Error" wrapper.
    if (err.message?.startsWith("Validator error")) return error(`ArgumentValidationError: ${err.message}`);
    const data = err.name === "ConvexError" && "data" in err ? exportValue(err.data as Value, String(format)) : undefined;
    return error(`[Request ID: ${requestId}] Server Error\nUncaught ${err.name ?? "Error"}: ${err.message}`, data);
  }
}

/** A Convex value in the requested output format (undefined becomes null). */
export function exportValue(value: Value | undefined, format: string): JSONValue {
  if (value === undefined) return null;
  return format === "convex_encoded_json" || format === "convex_json" ? convexToJson(value) : clean(value);
}

/** Convex's clean `json` export: int64 as decimal string, bytes as base64, odd floats as names. */
function clean(value: Value): JSONValue {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  if (Array.isArray(value)) return value.map(clean);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, clean(v as Value)]));
  }
  return value as JSONValue;
}

function title(kind: FunctionKind): string {
  return kind[0].toUpperCase() + kind.slice(1);
}
