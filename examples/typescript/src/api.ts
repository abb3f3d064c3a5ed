// A client of Relay's `api` service (docs/API.md): POST /v1/jobs, GET /v1/jobs/{id} and
// POST /v1/jobs/{id}/cancel, with Node's built-in fetch. The types come from schemas/openapi.v1.json (`npm run generate`).
import { GoogleAuth } from "google-auth-library";

import type { components } from "./relay-api.js";

export type CreateJob = components["schemas"]["CreateJob"];
export type Job = components["schemas"]["Job"];
export type Problem = components["schemas"]["Problem"];

/** Where the API is and how to prove who is calling. */
export interface ApiOptions {
  /** The api service's URL: `terraform output api_url`, or http://127.0.0.1:8087 under `make run`. */
  baseUrl: string;
  /**
   * "google": a Google ID token for `audience` on every request (the metadata server on Cloud Run,
   * else Application Default Credentials). "off": no token, only for the local stack, whose API
   * runs with RELAY_API_AUTH=off.
   */
  auth: "google" | "off";
  /** The token's audience: RELAY_API_AUDIENCE if the service sets one, else its URL. */
  audience?: string;
  /** How long to keep retrying 409 `idempotency-key-in-progress`, 503 and network errors; 60 s by default. */
  retryForMs?: number;
  /** Stands in for setTimeout in tests. */
  sleep?: (ms: number) => Promise<void>;
}

/** The API answered with a problem (RFC 9457) that retrying with the same key will not change. */
export class RelayApiError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    super(`${status} ${problem.type}: ${problem.detail}`);
    this.name = "RelayApiError";
  }
}

export interface Created {
  job: Job;
  /** True when this is the answer to an earlier request with the same Idempotency-Key. */
  replayed: boolean;
}

export const PROBLEM = "urn:replicate-relay:problem:";
/** The answers a later try of the same request can change: the same key still in progress, the service unavailable. */
function retryable(status: number, problem: Problem): boolean {
  return status === 503 || (status === 409 && problem.type === `${PROBLEM}idempotency-key-in-progress`);
}

export class RelayApi {
  readonly #baseUrl: string;
  readonly #options: ApiOptions;
  #headers: ((url: string) => Promise<Headers>) | undefined;

  constructor(options: ApiOptions) {
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#options = options;
  }

  /** Submit a prediction. A retry with the same key and body gets the first answer (no second prediction). */
  async createJob(body: CreateJob, idempotencyKey: string): Promise<Created> {
    const response = await this.#send("POST", "/v1/jobs", {
      body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
    });
    const job = (await response.json()) as Job;
    return { job, replayed: response.headers.get("idempotency-replayed") === "true" };
  }

  /**
   * Cancel a job: Relay asks Replicate to stop it and answers 202 with the job, still open, its
   * `cancel_requested_at` set; the job ends `canceled` and job-events says so. Safe to repeat while
   * the job is open. A job that has already ended is a RelayApiError 409 (`job-final`), none a 404.
   */
  async cancelJob(jobId: string): Promise<Job> {
    const response = await this.#send("POST", `/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { headers: {} });
    return (await response.json()) as Job;
  }

  /** One job; null when there is no such job. */
  async getJob(jobId: string): Promise<Job | null> {
    try {
      const response = await this.#send("GET", `/v1/jobs/${encodeURIComponent(jobId)}`, { headers: {} });
      return (await response.json()) as Job;
    } catch (error) {
      if (error instanceof RelayApiError && error.status === 404) return null;
      throw error;
    }
  }

  /** One request, retried while the answer says it may succeed later with the same request. */
  async #send(method: string, path: string, init: { body?: string; headers: Record<string, string> }): Promise<Response> {
    const url = this.#baseUrl + path;
    const sleep = this.#options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
    const deadline = Date.now() + (this.#options.retryForMs ?? 60_000);
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        const headers = new Headers(init.headers);
        for (const [name, value] of await this.#authHeaders(url)) headers.set(name, value);
        response = await fetch(url, { method, headers, ...(init.body === undefined ? {} : { body: init.body }) });
      } catch (error) {
        // Unreachable, reset, DNS: nothing was answered, so the same request (same key) is safe again.
        if (Date.now() >= deadline) throw error;
        await sleep(backoff(attempt));
        continue;
      }
      if (response.ok) return response;
      const problem = await readProblem(response);
      if (!retryable(response.status, problem) || Date.now() >= deadline) throw new RelayApiError(response.status, problem);
      const retryAfter = Number(response.headers.get("retry-after"));
      await sleep(Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(retryAfter, 10) * 1000 : backoff(attempt));
    }
  }

  async #authHeaders(url: string): Promise<Headers> {
    if (this.#options.auth === "off") return new Headers();
    if (this.#headers === undefined) {
      // getIdTokenClient picks the metadata server on Google Cloud, else Application Default
      // Credentials (a service account: Workload Identity Federation or a key). The client caches
      // the token and fetches a new one shortly before it expires.
      const client = await new GoogleAuth().getIdTokenClient(this.#options.audience ?? this.#baseUrl);
      this.#headers = (target) => client.getRequestHeaders(target);
    }
    return this.#headers(url);
  }
}

function backoff(attempt: number): number {
  return Math.min(250 * 2 ** (attempt - 1), 5_000);
}

async function readProblem(response: Response): Promise<Problem> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as Problem;
    if (typeof body === "object" && body !== null && typeof body.type === "string") return body;
  } catch {
    // not JSON: a proxy's or load balancer's page
  }
  return {
    type: "about:blank",
    title: response.statusText,
    status: response.status,
    detail: text.slice(0, 500),
    instance: new URL(response.url || "http://unknown/").pathname,
  };
}
