// Reproduction of Convex's official Clerk demo webhook route (see README.md).
import { httpRouter } from "convex/server";
import { Webhook } from "svix";
import { internal } from "./_generated/api";
import { httpAction } from "./_generated/server";

/** The part of @clerk/backend's WebhookEvent the demo reads. */
type ClerkWebhookEvent = { type: string; data: { id?: string } & Record<string, unknown> };

const http = httpRouter();

http.route({
  path: "/clerk-users-webhook",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const event = await validateRequest(request);
    if (event === null) return new Response("Error occured", { status: 400 });
    switch (event.type) {
      case "user.created":
      case "user.updated":
        await ctx.runMutation(internal.users.upsertFromClerk, { data: event.data as never });
        break;
      case "user.deleted":
        await ctx.runMutation(internal.users.deleteFromClerk, { clerkUserId: event.data.id! });
        break;
      default:
        console.log("Ignored Clerk webhook event", event.type);
    }
    return new Response(null, { status: 200 });
  }),
});

async function validateRequest(request: Request): Promise<ClerkWebhookEvent | null> {
  const payload = await request.text();
  const headers = {
    "svix-id": request.headers.get("svix-id")!,
    "svix-timestamp": request.headers.get("svix-timestamp")!,
    "svix-signature": request.headers.get("svix-signature")!,
  };
  try {
    return new Webhook(process.env.CLERK_WEBHOOK_SECRET!).verify(payload, headers) as ClerkWebhookEvent;
  } catch (error) {
    console.error("Error verifying webhook event", error);
    return null;
  }
}

export default http;
