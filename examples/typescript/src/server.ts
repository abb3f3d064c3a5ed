// The app's route handler on Relay: POST /relay/job-events receives job-events from a Pub/Sub push
// subscription (Terraform's app_event_endpoints; `relay dev --app-endpoint` locally), marks the
// order done, and answers 204 only once that is written. Anything else is a non-2xx, which Pub/Sub
// delivers again after its backoff (then to the dead-letter subscription).
//
//   npm run server
//
// PORT, HOST                 where to listen (9000, 127.0.0.1; HOST=0.0.0.0 in a container)
// ORDERS_FILE                the order store (./orders.json)
// RELAY_PUSH_AUTH            "off" for the local stack: the Pub/Sub emulator sends no token
// RELAY_PUSH_AUDIENCE        the URL exactly as in app_event_endpoints (required unless auth is off)
// RELAY_PUSH_SERVICE_ACCOUNT terraform output app_event_push_service_account (required unless auth is off)
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

import { OAuth2Client } from "google-auth-library";

import { BadEnvelope, decodePush } from "./job-event.js";
import { OrderStore } from "./store.js";

export const ROUTE = "/relay/job-events";
const MAX_BODY_BYTES = 10 * 1024 * 1024; // Pub/Sub's largest message, base64 and all, fits

export type PushAuth = { mode: "off" } | { mode: "google"; audience: string; serviceAccount: string };

export class Unauthorized extends Error {
  override name = "Unauthorized";
}

/** Checks the push's OIDC token: Google's signature, expiry, issuer, audience, and the sender. */
export function pushVerifier(auth: PushAuth, google: OAuth2Client = new OAuth2Client()): (authorization: string | undefined) => Promise<void> {
  if (auth.mode === "off") return async () => {};
  return async (authorization) => {
    const token = authorization?.match(/^Bearer (\S+)$/i)?.[1];
    if (!token) throw new Unauthorized("no bearer token");
    let claims;
    try {
      // Throws unless Google signed it (certificates cached by the client), it has not expired,
      // the issuer is accounts.google.com and the audience is ours.
      claims = (await google.verifyIdToken({ idToken: token, audience: auth.audience })).getPayload();
    } catch (error) {
      throw new Unauthorized(`token refused: ${(error as Error).message}`);
    }
    // Without this any Google account could mint a token for our URL.
    if (claims?.email !== auth.serviceAccount || claims.email_verified !== true) {
      throw new Unauthorized(`token of ${claims?.email ?? "no e-mail"}, not Relay's push account`);
    }
  };
}

export interface AppOptions {
  store: OrderStore;
  verify: (authorization: string | undefined) => Promise<void>;
  log?: (line: string) => void;
}

class TooLarge extends Error {}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new TooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function answer(response: ServerResponse, status: number, text?: string): void {
  if (text === undefined) {
    response.writeHead(status).end();
  } else {
    response.writeHead(status, { "Content-Type": "text/plain; charset=utf-8" }).end(`${text}\n`);
  }
}

/** The route handler: every outcome is an answer, and only a durable one is a 2xx. */
export function handler(options: AppOptions): (request: IncomingMessage, response: ServerResponse) => Promise<void> {
  const log = options.log ?? ((line: string) => console.log(line));
  return async (request, response) => {
    const path = new URL(request.url ?? "/", "http://app").pathname;
    if (path !== ROUTE) return answer(response, 404, "not found");
    if (request.method !== "POST") {
      response.setHeader("Allow", "POST");
      return answer(response, 405, "method not allowed");
    }
    try {
      await options.verify(request.headers.authorization); // before reading the body
    } catch (error) {
      log(`401 ${(error as Error).message}`);
      return answer(response, 401, "unauthorized");
    }
    try {
      const { envelope, event } = decodePush(await readBody(request));
      const outcome = await options.store.record(event); // resolves once written to disk
      const order = event.metadata.order ?? "-";
      log(`204 ${event.event_id} order=${order} ${outcome} (message ${envelope.message.messageId}, attempt ${envelope.deliveryAttempt ?? 1})`);
      return answer(response, 204);
    } catch (error) {
      if (error instanceof TooLarge) return answer(response, 413, "too large");
      if (error instanceof BadEnvelope) {
        log(`400 ${error.message}`);
        return answer(response, 400, error.message);
      }
      // Not written: Pub/Sub delivers the event again after its backoff.
      log(`500 ${(error as Error).stack ?? String(error)}`);
      return answer(response, 500, "could not record the event");
    }
  };
}

export function createApp(options: AppOptions): Server {
  const handle = handler(options);
  return createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      console.error(error);
      if (!response.headersSent) answer(response, 500, "internal error");
    });
  });
}

/** RELAY_PUSH_AUTH / RELAY_PUSH_AUDIENCE / RELAY_PUSH_SERVICE_ACCOUNT; refuses a half-configured check. */
export function pushAuthFromEnv(env: NodeJS.ProcessEnv): PushAuth {
  if (env.RELAY_PUSH_AUTH === "off") return { mode: "off" };
  const audience = env.RELAY_PUSH_AUDIENCE;
  const serviceAccount = env.RELAY_PUSH_SERVICE_ACCOUNT;
  if (!audience || !serviceAccount) {
    throw new Error(
      "set RELAY_PUSH_AUDIENCE (the URL as in app_event_endpoints) and RELAY_PUSH_SERVICE_ACCOUNT " +
        "(terraform output app_event_push_service_account), or RELAY_PUSH_AUTH=off for the local stack",
    );
  }
  return { mode: "google", audience, serviceAccount };
}

async function main(): Promise<void> {
  const auth = pushAuthFromEnv(process.env);
  const storePath = resolve(process.env.ORDERS_FILE ?? "orders.json");
  const store = await OrderStore.open(storePath);
  const server = createApp({ store, verify: pushVerifier(auth) });
  const host = process.env.HOST ?? "127.0.0.1";
  const port = Number(process.env.PORT ?? "9000");
  server.listen(port, host, () => {
    const address = server.address();
    const bound = typeof address === "object" && address !== null ? address.port : port;
    const check = auth.mode === "off" ? "no token check (RELAY_PUSH_AUTH=off)" : `tokens of ${auth.serviceAccount} for ${auth.audience}`;
    console.log(`listening on http://${host}:${bound}${ROUTE}, ${check}, orders in ${storePath}`);
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => server.close(() => process.exit(0)));
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(2);
  });
}
