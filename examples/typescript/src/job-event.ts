// job-events as a push subscription delivers them (docs/APP.md, "Receiving job-events pushes").
// JobEvent is written by hand to match schemas/job-event.v1.schema.json (openapi-typescript reads
// OpenAPI documents, not bare JSON Schemas); v1 only grows, so unknown properties are kept, not refused.

export type FinalState = "succeeded" | "failed" | "canceled" | "aborted";

/** One archived output, as announced ($defs/AnnouncedOutput). */
export interface AnnouncedOutput {
  index: number | null;
  gs_uri: string;
  content_type: string;
  size: number;
  crc32c: string;
}

/** A value of the prediction kept in the bucket, too large for the job ($defs/StoredValue). */
export interface StoredValue {
  gs_uri: string;
  size: number;
  crc32c: string;
}

/** The data of one job-events message: a job reached a final state. */
export interface JobEvent {
  schema_version: "1";
  /** `{job_id}:{state}`: drop a message whose event_id was handled already. */
  event_id: string;
  type: `job.${FinalState}`;
  job_id: string;
  prediction_id: string | null;
  state: FinalState;
  model: string | null;
  outputs: AnnouncedOutput[];
  /** The prediction's output exactly as Replicate sent it; null when it is in `stored_values`. */
  output: unknown;
  output_value: unknown;
  error: unknown;
  error_code: string | null;
  /** The submitter's metadata: here `{order: "A-1042"}`. */
  metadata: Record<string, string>;
  stored_values: Record<string, StoredValue>;
  completed_at: string | null;
}

/** Pub/Sub's push request body. */
export interface PushEnvelope {
  message: {
    data: string; // base64 of the JobEvent's JSON
    attributes?: Record<string, string>;
    messageId: string;
    publishTime: string;
  };
  subscription: string;
  deliveryAttempt?: number;
}

/** The body is not a job-events push: answered 400, so Pub/Sub retries it, then dead-letters it. */
export class BadEnvelope extends Error {
  override name = "BadEnvelope";
}

const STATES: ReadonlySet<string> = new Set(["succeeded", "failed", "canceled", "aborted"]);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The job event inside a push request's body; throws BadEnvelope. */
export function decodePush(body: string): { envelope: PushEnvelope; event: JobEvent } {
  let envelope: unknown;
  try {
    envelope = JSON.parse(body);
  } catch {
    throw new BadEnvelope("the body is not JSON");
  }
  if (!isObject(envelope) || !isObject(envelope.message) || typeof envelope.message.data !== "string") {
    throw new BadEnvelope("no message.data: not a Pub/Sub push");
  }
  let event: unknown;
  try {
    event = JSON.parse(Buffer.from(envelope.message.data, "base64").toString("utf8"));
  } catch {
    throw new BadEnvelope("message.data is not base64 of JSON");
  }
  if (
    !isObject(event) ||
    event.schema_version !== "1" ||
    typeof event.event_id !== "string" ||
    typeof event.job_id !== "string" ||
    typeof event.state !== "string" ||
    !STATES.has(event.state) ||
    !Array.isArray(event.outputs) ||
    !isObject(event.metadata)
  ) {
    throw new BadEnvelope("message.data is not a job-events v1 message");
  }
  return { envelope: envelope as unknown as PushEnvelope, event: event as unknown as JobEvent };
}
