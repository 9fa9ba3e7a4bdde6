/**
 * Loads a Convex functions folder for convex-test, instrumented for tests:
 * every registered query/mutation/action counts its calls and can be made to
 * throw (the fault switch). The instrumentation sits in the module loader, so
 * it applies however a function is reached: /api/mutation, or an HTTP action's
 * ctx.runMutation (convex-test resolves both through this loader).
 */
import { readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";

type Module = Record<string, unknown>;
type Loader = () => Promise<Module>;

/** A registered Convex function as `convex/server` builds it. */
export interface RegisteredFunction {
  isQuery?: boolean;
  isMutation?: boolean;
  isAction?: boolean;
  isPublic?: boolean;
  isInternal?: boolean;
  _handler: (...args: unknown[]) => unknown;
}

export type FunctionKind = "query" | "mutation" | "action";

/** Fault messages by function name ("users:upsertFromClerk"). */
export const faults = new Map<string, string>();
/** Calls that reached a function's handler, by function name. */
export const calls = new Map<string, number>();

export class FunctionsFolder {
  readonly root: string;
  /** Absolute path -> loader, the map convex-test's `modules` argument wants. */
  readonly modules: Record<string, Loader> = {};
  private readonly cache = new Map<string, Promise<Module>>();

  constructor(root: string) {
    this.root = resolve(root);
    for (const file of sourceFiles(this.root)) {
      const name = relative(this.root, file).replace(/\.[^.]+$/, "");
      this.modules[file] = () => this.load(name, file);
    }
    if (!Object.keys(this.modules).some((path) => path.includes("_generated"))) {
      throw new Error(`${this.root} has no _generated/ folder (convex-test needs one)`);
    }
  }

  async schema(): Promise<unknown> {
    const file = Object.keys(this.modules).find((path) => /[\\/]schema\.[jt]s$/.test(path));
    return file === undefined ? undefined : (await this.modules[file]())["default"];
  }

  /** The registered function for "module:export" (export "default" if no colon), or null. */
  async lookup(udfPath: string): Promise<RegisteredFunction | null> {
    const [modulePath, exportName = "default"] = udfPath.split(":");
    const file = Object.keys(this.modules).find(
      (path) => relative(this.root, path).replace(/\.[^.]+$/, "") === modulePath,
    );
    if (file === undefined) return null;
    const fn = (await this.modules[file]())[exportName];
    return isRegistered(fn) ? fn : null;
  }

  private load(name: string, file: string): Promise<Module> {
    let module = this.cache.get(file);
    if (module === undefined) {
      module = import(pathToFileURL(file).href).then((m: Module) => instrument(name, m));
      this.cache.set(file, module);
    }
    return module;
  }
}

export function kindOf(fn: RegisteredFunction): FunctionKind {
  if (fn.isQuery) return "query";
  if (fn.isMutation) return "mutation";
  return "action";
}

/** Copies of the module's registered functions whose handlers count calls and honour faults. */
function instrument(moduleName: string, module: Module): Module {
  const out: Module = { ...module };
  for (const [exportName, value] of Object.entries(module)) {
    if (!isRegistered(value)) continue;
    const name = exportName === "default" ? moduleName : `${moduleName}:${exportName}`;
    const handler = value._handler;
    // A plain-object copy keeps every property convex-test reads (isMutation,
    // exportArgs, ...) without mutating the shared module namespace.
    out[exportName] = {
      ...value,
      _handler: (...args: unknown[]) => {
        calls.set(name, (calls.get(name) ?? 0) + 1);
        const fault = faults.get(name);
        if (fault !== undefined) throw new Error(fault);
        return handler(...args);
      },
    };
  }
  return out;
}

function isRegistered(value: unknown): value is RegisteredFunction {
  return (
    (typeof value === "function" || typeof value === "object") &&
    value !== null &&
    typeof (value as RegisteredFunction)._handler === "function" &&
    Boolean((value as RegisteredFunction).isQuery || (value as RegisteredFunction).isMutation || (value as RegisteredFunction).isAction)
  );
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.name.startsWith(".") || entry.name === "node_modules") return [];
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.(ts|js|mjs)$/.test(entry.name) && !entry.name.endsWith(".d.ts") ? [path] : [];
  });
}
