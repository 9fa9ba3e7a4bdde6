/**
 * Node module-resolution hook: Convex function folders (examples/convex,
 * tests/convex_official) import `convex/...` and `svix`, but they have no
 * node_modules of their own (or a different copy). Resolve those imports from
 * the emulator's node_modules so there is exactly one `convex` in the process:
 * convex-test checks `instanceof ConvexError` and shares global state with the
 * `convex` package the functions were registered with.
 */
const EMULATOR_PACKAGE = new URL("./package.json", import.meta.url).href;
const SHARED = /^(convex|svix)(\/|$)/;

export async function resolve(specifier, context, nextResolve) {
  const parent = context.parentURL ?? "";
  if (SHARED.test(specifier) && !parent.includes("/node_modules/")) {
    return nextResolve(specifier, { ...context, parentURL: EMULATOR_PACKAGE });
  }
  return nextResolve(specifier, context);
}
