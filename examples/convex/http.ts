/**
 * POST /clerk-users-webhook: a drop-in for Convex's official Clerk webhook
 * route. Point either Clerk itself or clerk-convex-relay (HTTP-action target)
 * at `https://<deployment>.convex.site/clerk-users-webhook`.
 *
 * It accepts Clerk's raw envelope (`object: "event"`, what Clerk and the relay's
 * RELAY_PAYLOAD=raw send) and the relay's normalized event (RELAY_PAYLOAD=
 * normalized), lifts both into the normalized shape, and passes the svix-id
 * along as the event id so the mutations can drop redeliveries.
 */
import { httpRouter } from "convex/server";
import { Webhook } from "svix";
import { internal } from "./_generated/api";
import { httpAction } from "./_generated/server";
import { toMs, type NormalizedEvent } from "./clerkPayload";

const http = httpRouter();

http.route({
  path: "/clerk-users-webhook",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const body = await request.text();
    const payload = verify(body, request.headers);
    if (payload === null) return new Response("Error occured", { status: 400 });
    const event = toEvent(payload, request.headers.get("svix-id") ?? "");
    if (event === null) return new Response("Unrecognised event payload", { status: 400 });

    switch (event.type) {
      case "user.created":
      case "user.updated":
        await ctx.runMutation(internal.users.upsertFromClerk, { event });
        break;
      case "user.deleted":
        await ctx.runMutation(internal.users.deleteFromClerk, { event });
        break;
      case "organization.created":
      case "organization.updated":
        await ctx.runMutation(internal.orgs.upsertOrganization, { event });
        break;
      case "organization.deleted":
        await ctx.runMutation(internal.orgs.deleteOrganization, { event });
        break;
      case "organizationMembership.created":
      case "organizationMembership.updated":
        await ctx.runMutation(internal.orgs.upsertMembership, { event });
        break;
      case "organizationMembership.deleted":
        await ctx.runMutation(internal.orgs.deleteMembership, { event });
        break;
      default:
        // Acknowledge: a non-2xx would only make the sender retry an event we
        // will never handle.
        console.log("Ignored Clerk webhook event", event.type);
    }
    return new Response(null, { status: 200 });
  }),
});

/**
 * The verified JSON payload, or null if no secret's signature matches.
 * CLERK_WEBHOOK_SECRET may list several secrets (space or comma separated) so a
 * secret can be rotated without downtime.
 */
function verify(body: string, headers: Headers): unknown {
  const secrets = (process.env.CLERK_WEBHOOK_SECRET ?? "").split(/[\s,]+/).filter(Boolean);
  if (secrets.length === 0) {
    // A 500 (not 400) so the sender keeps retrying until the secret is configured.
    throw new Error("CLERK_WEBHOOK_SECRET is not set in this Convex deployment");
  }
  const svixHeaders = {
    "svix-id": headers.get("svix-id") ?? "",
    "svix-timestamp": headers.get("svix-timestamp") ?? "",
    "svix-signature": headers.get("svix-signature") ?? "",
  };
  for (const secret of secrets) {
    try {
      // svix 1.x returns the parsed payload (2.x returns nothing: keep ^1).
      return new Webhook(secret).verify(body, svixHeaders);
    } catch {
      // try the next secret
    }
  }
  console.error("Clerk webhook signature did not verify");
  return null;
}

/** The normalized event for a raw Clerk envelope or a relay-normalized event. */
function toEvent(payload: unknown, svixId: string): NormalizedEvent | null {
  if (typeof payload !== "object" || payload === null) return null;
  const p = payload as Record<string, any>;
  if (typeof p.type !== "string" || typeof p.data !== "object" || p.data === null) return null;
  if (p.object === "event") {
    return {
      id: svixId,
      type: p.type,
      occurredAt: typeof p.timestamp === "number" ? toMs(p.timestamp) : Date.now(),
      instanceId: typeof p.instance_id === "string" ? p.instance_id : null,
      object: typeof p.data.object === "string" ? p.data.object : null,
      entityId: typeof p.data.id === "string" ? p.data.id : null,
      data: withoutMetadata(p.data),
    };
  }
  if ("entityId" in p && typeof p.occurredAt === "number") {
    // Rebuilt field by field: the mutations' validator rejects unknown fields.
    return {
      id: typeof p.id === "string" ? p.id : svixId,
      type: p.type,
      occurredAt: p.occurredAt,
      instanceId: typeof p.instanceId === "string" ? p.instanceId : null,
      object: typeof p.object === "string" ? p.object : null,
      entityId: typeof p.entityId === "string" ? p.entityId : null,
      data: p.data,
    };
  }
  return null;
}

/**
 * Clerk's data minus every `*_metadata` object, at any depth. Metadata keys are
 * user-chosen, and one key starting with `$` makes Convex reject the whole
 * mutation call (the official template breaks on that); nothing here stores
 * metadata, so dropping it costs nothing.
 */
function withoutMetadata(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutMetadata);
  if (typeof value !== "object" || value === null) return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([key]) => !key.endsWith("_metadata"))
      .map(([key, inner]) => [key, withoutMetadata(inner)]),
  );
}

export default http;
