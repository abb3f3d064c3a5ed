// The app's lib/restoration/trigger.ts on Relay: submit one order's photo to
// flux-kontext-apps/restore-image through Relay's api service. Relay sets the webhook; the app is
// told the outcome by a job-events push (server.ts), never by asking Replicate.
//
//   npm run trigger -- --order A-1042 --image ./photo.png [--json]
//
// RELAY_API_URL     the api service (terraform output api_url; http://127.0.0.1:8087 under make run)
// RELAY_API_AUTH    "off" for the local stack, which checks no token; anything else: Google ID tokens
// RELAY_API_AUDIENCE the tokens' audience, when the service sets one (default: RELAY_API_URL)
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { extname } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { type CreateJob, type Created, RelayApi, RelayApiError } from "./api.js";

export const MODEL = "flux-kontext-apps/restore-image";
// The original app's settings: PNG out, Replicate's default safety tolerance.
export const OUTPUT_FORMAT = "png";
export const SAFETY_TOLERANCE = 2;
// Replicate recommends data: URIs only under 1 MB; a larger photo belongs at a URL.
export const MAX_DATA_URI_CHARS = 1_000_000;
const MEDIA_TYPES: Record<string, string> = {
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".webp": "image/webp",
  ".gif": "image/gif",
};

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/**
 * The Idempotency-Key of an order's restoration: the same for every trigger of the order, so a
 * retried trigger (a double click, a redelivered queue message, a crash before the answer was
 * saved) gets the first job back and never starts a second prediction. Hashed, because a key must
 * be printable ASCII and order numbers need not be.
 */
export function idempotencyKey(order: string): string {
  return `restore-order-${sha256(order).toString("hex").slice(0, 32)}`;
}

/** A seed fixed per order: a retried trigger sends the same body, which the key requires. */
export function seedFor(order: string): number {
  return sha256(order).readUInt32BE(0) & 0x7fffffff;
}

/** The photo as the model's `input_image`: an http(s) URL as is, a file as a data: URI. */
export async function inputImage(image: string): Promise<string> {
  if (/^https?:\/\//i.test(image)) return image;
  const mediaType = MEDIA_TYPES[extname(image).toLowerCase()] ?? "application/octet-stream";
  let data: Buffer;
  try {
    data = await readFile(image);
  } catch (error) {
    throw new UsageError(`cannot read the photo ${image}: ${(error as Error).message}`);
  }
  const uri = `data:${mediaType};base64,${data.toString("base64")}`;
  if (uri.length > MAX_DATA_URI_CHARS) {
    throw new UsageError(`${image} is ${uri.length} characters as a data: URI, over ${MAX_DATA_URI_CHARS}: host it and pass its URL`);
  }
  return uri;
}

/** POST /v1/jobs's body: the four inputs the original trigger sent, the order number as metadata. */
export function restorationRequest(order: string, image: string, extraInput: Record<string, unknown> = {}): CreateJob {
  return {
    model: MODEL,
    input: {
      input_image: image,
      seed: seedFor(order),
      output_format: OUTPUT_FORMAT,
      safety_tolerance: SAFETY_TOLERANCE,
      ...extraInput,
    },
    metadata: { order },
    // start for the status page, completed for the outcome: no output/logs events per prediction.
    webhook_events: ["start", "completed"],
  };
}

/** What the original trigger did: start the restoration of one order's photo, and return its job. */
export async function triggerRestoration(
  api: RelayApi,
  order: string,
  image: string,
  extraInput: Record<string, unknown> = {},
): Promise<Created> {
  const body = restorationRequest(order, await inputImage(image), extraInput);
  return api.createJob(body, idempotencyKey(order));
}

export class UsageError extends Error {
  override name = "UsageError";
}

/** RELAY_API_URL / RELAY_API_AUTH / RELAY_API_AUDIENCE, or the flags that override them. */
export function apiFromEnv(env: NodeJS.ProcessEnv, flags: { api?: string | undefined; noAuth?: boolean | undefined }): RelayApi {
  const baseUrl = flags.api ?? env.RELAY_API_URL;
  if (!baseUrl) throw new UsageError("set RELAY_API_URL (or --api): terraform output api_url, or http://127.0.0.1:8087 under make run");
  const off = flags.noAuth === true || env.RELAY_API_AUTH === "off";
  const audience = env.RELAY_API_AUDIENCE;
  return new RelayApi({ baseUrl, auth: off ? "off" : "google", ...(audience ? { audience } : {}) });
}

/** The options of every command (trigger, cancel): where the API is, no token, JSON output. */
export const API_OPTIONS = {
  api: { type: "string" },
  "no-auth": { type: "boolean", default: false },
  json: { type: "boolean", default: false },
} as const;

/** A command's failure printed, and its exit code: 2 a usage error, 1 a refusal by Relay or no answer. */
export function failed(error: unknown, refused: string): number {
  if (error instanceof UsageError) {
    console.error(error.message);
    return 2;
  }
  if (error instanceof RelayApiError) {
    const fields = (error.problem.errors ?? []).map((e) => `\n  ${e.field}: ${e.message}`).join("");
    console.error(`${refused}: ${error.message}${fields}`);
    return 1;
  }
  console.error(`could not reach Relay's API: ${String(error)}`);
  return 1;
}

function parseInputs(pairs: string[]): Record<string, unknown> {
  const inputs: Record<string, unknown> = {};
  for (const pair of pairs) {
    const at = pair.indexOf("=");
    if (at < 1) throw new UsageError(`--input ${pair}: expected KEY=VALUE`);
    const raw = pair.slice(at + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw); // numbers, booleans, JSON; anything else stays a string
    } catch {
      // a plain string
    }
    inputs[pair.slice(0, at)] = value;
  }
  return inputs;
}

export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        order: { type: "string" },
        image: { type: "string" },
        input: { type: "string", multiple: true, default: [] },
        ...API_OPTIONS,
      },
      strict: true,
    }).values;
  } catch (error) {
    console.error(`usage: npm run trigger -- --order A-1042 --image ./photo.png [--input KEY=VALUE]... [--api URL] [--no-auth] [--json]\n${String(error)}`);
    return 2;
  }
  try {
    if (!args.order || !args.image) throw new UsageError("--order and --image are required");
    const api = apiFromEnv(process.env, { api: args.api, noAuth: args["no-auth"] });
    const { job, replayed } = await triggerRestoration(api, args.order, args.image, parseInputs(args.input ?? []));
    if (args.json) {
      console.log(JSON.stringify({ order: args.order, job_id: job.job_id, prediction_id: job.prediction_id, state: job.state, replayed }));
    } else {
      const again = replayed ? " (already triggered: the first trigger's job)" : "";
      console.log(`order ${args.order}: job ${job.job_id}, prediction ${job.prediction_id}, ${job.state}${again}`);
    }
    return 0;
  } catch (error) {
    return failed(error, `Relay refused the restoration of order ${args.order}`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  process.exitCode = await main(process.argv.slice(2));
}
