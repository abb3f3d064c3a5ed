// trigger.ts and api.ts against a stand-in for the api service: the request Relay gets, the
// Idempotency-Key, and the answers the client retries or reports.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, writeFile } from "node:fs/promises";
import { type IncomingHttpHeaders, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { RelayApi, RelayApiError } from "../src/api.js";
import { cancelRestoration } from "../src/cancel.js";
import { MODEL, idempotencyKey, restorationRequest, seedFor, triggerRestoration } from "../src/trigger.js";

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: unknown;
}

const seen: Seen[] = [];
let answers: Array<{ status: number; headers?: Record<string, string>; body: unknown }> = [];
const server = createServer(async (request, response) => {
  let text = "";
  for await (const chunk of request) text += chunk;
  seen.push({ method: request.method ?? "", url: request.url ?? "", headers: request.headers, body: text ? JSON.parse(text) : null });
  const next = answers.shift() ?? { status: 500, body: { type: "urn:test:none-left", title: "", status: 500, detail: "", instance: "" } };
  const type = next.status < 400 ? "application/json" : "application/problem+json";
  response.writeHead(next.status, { "Content-Type": type, ...next.headers }).end(JSON.stringify(next.body));
});
let baseUrl = "";
let photo = "";

before(async () => {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  photo = join(await mkdtemp(join(tmpdir(), "relay-ts-")), "photo.png");
  await writeFile(photo, Buffer.from("not really a png"));
});
after(() => server.close());

function job(order: string) {
  return { job_id: "job1", prediction_id: "pred1", state: "submitted", metadata: { order } };
}

function api(): RelayApi {
  return new RelayApi({ baseUrl, auth: "off", sleep: async () => {} });
}

test("the key and the seed are fixed per order, and differ between orders", () => {
  assert.equal(idempotencyKey("A-1042"), idempotencyKey("A-1042"));
  assert.notEqual(idempotencyKey("A-1042"), idempotencyKey("A-1043"));
  assert.match(idempotencyKey("Bestellung-Ä-7"), /^restore-order-[0-9a-f]{32}$/); // printable ASCII whatever the order
  assert.equal(seedFor("A-1042"), seedFor("A-1042"));
  assert.ok(Number.isInteger(seedFor("A-1042")) && seedFor("A-1042") >= 0);
});

test("the request carries the four restore-image inputs and the order as metadata", () => {
  const body = restorationRequest("A-1042", "https://example.com/a.jpg");
  assert.deepEqual(body, {
    model: MODEL,
    input: { input_image: "https://example.com/a.jpg", seed: seedFor("A-1042"), output_format: "png", safety_tolerance: 2 },
    metadata: { order: "A-1042" },
    webhook_events: ["start", "completed"],
  });
});

test("a trigger posts the photo as a data: URI with the order's key and no token when auth is off", async () => {
  seen.length = 0;
  answers = [{ status: 201, body: job("A-1042") }];
  const created = await triggerRestoration(api(), "A-1042", photo);
  assert.equal(created.job.job_id, "job1");
  assert.equal(created.replayed, false);
  const [request] = seen;
  assert.ok(request);
  assert.equal(request.method, "POST");
  assert.equal(request.url, "/v1/jobs");
  assert.equal(request.headers["idempotency-key"], idempotencyKey("A-1042"));
  assert.equal(request.headers["content-type"], "application/json");
  assert.equal(request.headers.authorization, undefined);
  const body = request.body as { input: Record<string, unknown>; metadata: unknown };
  assert.equal(body.input.input_image, `data:image/png;base64,${Buffer.from("not really a png").toString("base64")}`);
  assert.deepEqual(body.metadata, { order: "A-1042" });
});

test("409 in progress and 503 are retried with the same key, and a replay is reported", async () => {
  seen.length = 0;
  const problem = (status: number, type: string) => ({ type, title: "t", status, detail: "d", instance: "/v1/jobs" });
  answers = [
    { status: 409, headers: { "Retry-After": "1" }, body: problem(409, "urn:replicate-relay:problem:idempotency-key-in-progress") },
    { status: 503, body: problem(503, "urn:replicate-relay:problem:unavailable") },
    { status: 201, headers: { "Idempotency-Replayed": "true" }, body: job("A-7") },
  ];
  const created = await triggerRestoration(api(), "A-7", "https://example.com/a.jpg");
  assert.equal(created.replayed, true);
  assert.equal(seen.length, 3);
  assert.deepEqual(new Set(seen.map((request) => request.headers["idempotency-key"])), new Set([idempotencyKey("A-7")]));
});

test("a refusal is a RelayApiError with the problem, not retried", async () => {
  seen.length = 0;
  const refused = {
    type: "urn:replicate-relay:problem:idempotency-key-reused",
    title: "The key was used with another request",
    status: 422,
    detail: "another body",
    instance: "/v1/jobs",
  };
  answers = [{ status: 422, body: refused }];
  await assert.rejects(triggerRestoration(api(), "A-8", "https://example.com/b.jpg"), (error: unknown) => {
    assert.ok(error instanceof RelayApiError);
    assert.equal(error.status, 422);
    assert.equal(error.problem.type, refused.type);
    return true;
  });
  assert.equal(seen.length, 1);
});

test("getJob reads one job and gives null for a 404", async () => {
  answers = [
    { status: 200, body: job("A-9") },
    { status: 404, body: { type: "urn:replicate-relay:problem:not-found", title: "", status: 404, detail: "", instance: "" } },
  ];
  assert.equal((await api().getJob("job1"))?.job_id, "job1");
  assert.equal(await api().getJob("nope"), null);
});

test("a cancel posts to the job's cancel path and gives the job, whose cancel is under way", async () => {
  seen.length = 0;
  answers = [{ status: 202, body: { ...job("A-10"), state: "processing", cancel_requested_at: "2026-03-01T12:00:00Z" } }];
  const { requested, job: canceled } = await cancelRestoration(api(), "job1");
  assert.equal(requested, true);
  assert.equal(canceled.cancel_requested_at, "2026-03-01T12:00:00Z");
  assert.deepEqual(
    seen.map((request) => [request.method, request.url]),
    [["POST", "/v1/jobs/job1/cancel"]],
  );
});

test("a cancel of a job that has already ended is not retried and reports how it ended", async () => {
  seen.length = 0;
  const final = { type: "urn:replicate-relay:problem:job-final", title: "t", status: 409, detail: "d", instance: "/v1/jobs/job1/cancel", job_id: "job1" };
  answers = [
    { status: 409, body: final },
    { status: 200, body: { ...job("A-11"), state: "succeeded" } },
  ];
  const { requested, job: ended } = await cancelRestoration(api(), "job1");
  assert.equal(requested, false);
  assert.equal(ended.state, "succeeded");
  assert.deepEqual(
    seen.map((request) => [request.method, request.url]),
    [
      ["POST", "/v1/jobs/job1/cancel"],
      ["GET", "/v1/jobs/job1"],
    ],
  );
});

test("a cancel of no such job is a RelayApiError 404", async () => {
  answers = [{ status: 404, body: { type: "urn:replicate-relay:problem:not-found", title: "", status: 404, detail: "", instance: "" } }];
  await assert.rejects(cancelRestoration(api(), "nope"), (error: unknown) => error instanceof RelayApiError && error.status === 404);
});
