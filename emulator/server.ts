/**
 * A local stand-in for a Convex deployment, for the relay's end-to-end tests.
 *
 *   cd emulator && node --import tsx server.ts [--port N] [--host H]
 *        [--functions DIR] [--admin-key KEY] [--env KEY=VALUE]... [--exit-with-stdin]
 *
 * (`--import tsx` is resolved from the working directory, hence the cd; or use
 * `npm --prefix emulator start -- ...`.)
 *
 * One port serves both Convex URLs: the function API (`/api/...`, i.e.
 * CONVEX_URL) and the HTTP actions of DIR/http.ts (every other path, i.e.
 * CONVEX_SITE_URL). `/_test/...` is test control (README.md). Prints
 * `listening on <port>` once ready.
 */
import { register } from "node:module";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { resolve } from "node:path";
import { parseArgs } from "node:util";

// Before any functions module is imported (see resolve-hooks.mjs).
register("./resolve-hooks.mjs", import.meta.url);

const { convexTest } = await import("convex-test");
const { jsonToConvex } = await import("convex/values");
const { FunctionsFolder, faults, calls } = await import("./functions.ts");
const { callFunction, exportValue, nextRequestId, transportError } = await import("./functionApi.ts");
type Reply = import("./functionApi.ts").Reply;
type Caller = import("./functionApi.ts").Caller;

const { values: options } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    functions: { type: "string", default: resolve(import.meta.dirname, "../examples/convex") },
    "admin-key": { type: "string", default: "emulator-admin-key" },
    env: { type: "string", multiple: true, default: [] },
    "exit-with-stdin": { type: "boolean", default: false },
  },
});

// Relative to where the user ran the command (npm sets INIT_CWD for `npm start`).
const folder = new FunctionsFolder(resolve(process.env.INIT_CWD ?? process.cwd(), options.functions!));
const schema = await folder.schema();
const adminKey = withoutKeyPrefix(options["admin-key"]!);
for (const pair of options.env!) {
  const eq = pair.indexOf("=");
  if (eq < 1) throw new Error(`--env expects KEY=VALUE, got ${JSON.stringify(pair)}`);
  setEnv(pair.slice(0, eq), pair.slice(eq + 1));
}

// Convex functions read process.env directly; the emulator is one deployment.
function setEnv(key: string, value: string | null) {
  if (value === null) delete process.env[key];
  else process.env[key] = value;
}

let t = newDeployment();
function newDeployment() {
  return convexTest(schema as never, folder.modules);
}

const server = createServer((req, res) => {
  handle(req, res).catch((e: Error) => send(res, { status: 500, body: { code: "InternalServerError", message: e.message } }));
});
server.listen(Number(options.port), options.host, () => {
  const address = server.address();
  console.log(`listening on ${typeof address === "object" && address !== null ? address.port : options.port}`);
});
for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => process.exit(0));
// A test runner that dies without cleaning up closes our stdin: do not linger.
if (options["exit-with-stdin"]) process.stdin.on("close", () => process.exit(0)).resume();

async function handle(req: IncomingMessage, res: ServerResponse) {
  const url = new URL(req.url ?? "/", "http://emulator");
  const body = await readBody(req);
  if (url.pathname.startsWith("/_test/")) return send(res, await testControl(req.method ?? "GET", url.pathname, body));
  const api = /^\/api\/(query|mutation|action)$|^\/api\/run\/(.+)$/.exec(url.pathname);
  if (api !== null && req.method === "POST") return send(res, await functionCall(req, api, body));
  return sendResponse(res, await httpAction(req, url, body));
}

async function functionCall(req: IncomingMessage, match: RegExpExecArray, raw: Buffer): Promise<Reply> {
  if (!String(req.headers["content-type"] ?? "").includes("application/json")) {
    return transportError(400, "BadJsonBody", "Expected Content-Type: application/json");
  }
  let body: unknown;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    return transportError(400, "BadJsonBody", `Failed to parse JSON body: ${(e as Error).message}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return transportError(400, "BadJsonBody", "Expected a JSON object");
  }
  const caller = authenticate(req.headers.authorization);
  if ("status" in caller) return caller;
  const [, kind, runPath] = match;
  if (runPath !== undefined) {
    // /api/run/dir/file/fn -> "dir/file:fn"
    const parts = runPath.split("/");
    if (parts.length < 2) return transportError(400, "MissingIdentifier", "Expected /api/run/<module path>/<function>");
    const udfPath = `${parts.slice(0, -1).join("/")}:${parts.at(-1)}`;
    return callFunction(folder, t, caller, "any", udfPath, body as Record<string, unknown>);
  }
  const b = body as Record<string, unknown>;
  return callFunction(folder, t, caller, kind as "query", b.path, b);
}

/** `Convex <admin key>` -> admin; `Bearer <JWT>` -> that user (signature not checked). */
function authenticate(header: string | undefined): Caller | Reply {
  if (header === undefined || header === "") return { kind: "anonymous" };
  const [scheme, ...rest] = header.split(" ");
  const credential = rest.join(" ").trim();
  if (scheme.toLowerCase() === "convex") {
    return withoutKeyPrefix(credential) === adminKey
      ? { kind: "admin" }
      : transportError(401, "BadAdminKey", "The provided admin key was invalid for this instance");
  }
  if (scheme.toLowerCase() === "bearer") {
    try {
      const claims = JSON.parse(Buffer.from(credential.split(".")[1], "base64url").toString("utf8"));
      return { kind: "user", backend: t.withIdentity({ ...claims, subject: claims.sub, issuer: claims.iss }) };
    } catch {
      return transportError(401, "InvalidAuthHeader", "Could not parse the JWT in the Authorization header");
    }
  }
  return transportError(400, "HeaderParseFailure", "Authorization must be `Convex <key>` or `Bearer <token>`");
}

/** The deployment-name prefix of a dashboard key (`prod:happy-otter-123|...`) is optional. */
function withoutKeyPrefix(key: string): string {
  return key.replace(/^(prod|dev|preview):[^|]*\|/, "");
}

async function httpAction(req: IncomingMessage, url: URL, body: Buffer): Promise<Response> {
  const method = req.method ?? "GET";
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers.set(name, Array.isArray(value) ? value.join(", ") : value);
  }
  try {
    return await t.fetch(url.pathname + url.search, {
      method,
      headers,
      body: method === "GET" || method === "HEAD" ? undefined : new Uint8Array(body),
    });
  } catch (e) {
    // convex-test rejects where Convex answers 500 (dev deployment shape).
    const err = e as Error & { data?: unknown };
    const reply: Record<string, unknown> = {
      code: `[Request ID: ${nextRequestId()}] Server Error: ${err.message}`,
      trace: String(err.stack ?? err),
    };
    if (err.name === "ConvexError") reply.data = err.data;
    return Response.json(reply, { status: 500 });
  }
}

/** /_test/* endpoints: inspect and steer the emulated deployment. */
async function testControl(method: string, path: string, raw: Buffer): Promise<Reply> {
  const json = raw.length > 0 ? JSON.parse(raw.toString("utf8")) : {};
  const table = /^\/_test\/tables\/([A-Za-z_][A-Za-z0-9_]*)$/.exec(path);
  if (table !== null && method === "GET") {
    const docs = await t.run(async (ctx) => await ctx.db.query(table[1] as never).collect());
    return { status: 200, body: exportValue(docs as never, "json") };
  }
  if (table !== null && method === "POST") {
    // Bulk seeding (benchmarks): insert the given documents as they are, no functions run.
    if (!Array.isArray(json)) return transportError(400, "BadJsonBody", "Expected a JSON array of documents");
    await t.run(async (ctx) => {
      for (const doc of json) await ctx.db.insert(table[1] as never, jsonToConvex(doc) as never);
    });
    return { status: 200, body: { inserted: json.length } };
  }
  if (path === "/_test/reset" && method === "POST") {
    t = newDeployment();
    faults.clear();
    calls.clear();
    return { status: 200, body: { status: "reset" } };
  }
  if (path === "/_test/env" && method === "POST") {
    for (const [key, value] of Object.entries(json)) setEnv(key, value === null ? null : String(value));
    return { status: 200, body: { status: "ok" } };
  }
  if (path === "/_test/faults" && method === "POST") {
    if (typeof json.function !== "string") return transportError(400, "BadJsonBody", "Expected {function, message}");
    faults.set(json.function, String(json.message ?? "injected fault"));
    return { status: 200, body: Object.fromEntries(faults) };
  }
  if (path === "/_test/faults" && (method === "DELETE" || method === "GET")) {
    if (method === "DELETE") faults.clear();
    return { status: 200, body: Object.fromEntries(faults) };
  }
  if (path === "/_test/calls" && method === "GET") return { status: 200, body: Object.fromEntries(calls) };
  return transportError(404, "NotFound", `No test endpoint ${method} ${path}`);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function send(res: ServerResponse, reply: Reply) {
  res.writeHead(reply.status, { "content-type": "application/json" });
  res.end(JSON.stringify(reply.body));
}

async function sendResponse(res: ServerResponse, response: Response) {
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => (headers[name] = value));
  res.writeHead(response.status, headers);
  res.end(Buffer.from(await response.arrayBuffer()));
}
