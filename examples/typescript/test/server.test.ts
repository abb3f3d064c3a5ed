// server.ts's route: what it answers to pushes, duplicates, bad bodies, missing tokens and a store
// that cannot be written, and what it writes.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import type { OAuth2Client } from "google-auth-library";

import type { JobEvent } from "../src/job-event.js";
import { ROUTE, createApp, pushAuthFromEnv, pushVerifier } from "../src/server.js";
import { OrderStore, type StoreData } from "../src/store.js";

function event(jobId: string, order: string | undefined, state: JobEvent["state"] = "succeeded"): JobEvent {
  return {
    schema_version: "1",
    event_id: `${jobId}:${state}`,
    type: `job.${state}`,
    job_id: jobId,
    prediction_id: `p-${jobId}`,
    state,
    model: "flux-kontext-apps/restore-image",
    outputs: state === "succeeded" ? [{ index: 0, gs_uri: `gs://b/predictions/p-${jobId}/0-output.png`, content_type: "image/png", size: 9, crc32c: "AAAAAA==" }] : [],
    output: state === "succeeded" ? [`https://replicate.delivery/x/p-${jobId}/output.png`] : null,
    output_value: null,
    error: state === "succeeded" ? null : "CUDA out of memory",
    error_code: state === "succeeded" ? null : "failed",
    metadata: order === undefined ? {} : { order },
    stored_values: {},
    completed_at: "2026-12-01T23:32:54.371000+00:00",
  };
}

function envelope(data: JobEvent | string): string {
  const json = typeof data === "string" ? data : JSON.stringify(data);
  return JSON.stringify({
    message: { data: Buffer.from(json).toString("base64"), attributes: {}, messageId: "1", publishTime: "2026-12-01T23:32:54Z" },
    subscription: "projects/p/subscriptions/orders-web",
  });
}

async function started(options: { verify?: (authorization: string | undefined) => Promise<void> } = {}) {
  const path = join(await mkdtemp(join(tmpdir(), "relay-ts-")), "orders.json");
  const store = await OrderStore.open(path);
  const lines: string[] = [];
  const server: Server = createApp({ store, verify: options.verify ?? (async () => {}), log: (line) => lines.push(line) });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${ROUTE}`;
  const post = (body: string, headers: Record<string, string> = {}) =>
    fetch(url, { method: "POST", body, headers: { "Content-Type": "application/json", ...headers } });
  const saved = async () => JSON.parse(await readFile(path, "utf8")) as StoreData;
  return { server, store, path, url, post, saved, lines };
}

test("a push marks the order done on disk before the 204, and a duplicate changes nothing", async () => {
  const app = await started();
  try {
    const first = await app.post(envelope(event("j1", "A-1042")));
    assert.equal(first.status, 204);
    const data = await app.saved();
    const order = data.orders["A-1042"];
    assert.ok(order);
    assert.equal(order.done, true);
    assert.equal(order.status, "restored");
    assert.deepEqual(order.outputs, ["gs://b/predictions/p-j1/0-output.png"]);
    assert.deepEqual(order.event.metadata, { order: "A-1042" });
    assert.deepEqual(data.handled_event_ids, ["j1:succeeded"]);

    const again = await app.post(envelope(event("j1", "A-1042")));
    assert.equal(again.status, 204);
    assert.deepEqual(await app.saved(), data);
    assert.match(app.lines.at(-1) ?? "", /duplicate/);
  } finally {
    app.server.close();
  }
});

test("a failed job marks its order failed, a canceled one canceled; a job without an order is acknowledged and left", async () => {
  const app = await started();
  try {
    assert.equal((await app.post(envelope(event("j2", "A-2", "failed")))).status, 204);
    assert.equal((await app.post(envelope(event("j3", undefined)))).status, 204);
    assert.equal((await app.post(envelope(event("j4", "A-4", "canceled")))).status, 204);
    const data = await app.saved();
    assert.equal(data.orders["A-4"]?.status, "restoration_canceled");
    assert.equal(data.orders["A-2"]?.status, "restoration_failed");
    assert.equal(data.orders["A-2"]?.error_code, "failed");
    assert.deepEqual(Object.keys(data.orders), ["A-2", "A-4"]);
    assert.deepEqual(data.ignored_event_ids, ["j3:succeeded"]);
  } finally {
    app.server.close();
  }
});

test("a body that is not a job-events push is a 400; another path or method is 404 or 405", async () => {
  const app = await started();
  try {
    assert.equal((await app.post("not json")).status, 400);
    assert.equal((await app.post(JSON.stringify({ message: {} }))).status, 400);
    assert.equal((await app.post(envelope("{not json"))).status, 400);
    assert.equal((await app.post(envelope(JSON.stringify({ schema_version: "2" })))).status, 400);
    assert.equal((await fetch(app.url.replace(ROUTE, "/other"), { method: "POST", body: "{}" })).status, 404);
    const get = await fetch(app.url);
    assert.equal(get.status, 405);
    assert.equal(get.headers.get("allow"), "POST");
  } finally {
    app.server.close();
  }
});

test("a store that cannot be written is a 500 (Pub/Sub delivers again), and the event is not taken as handled", async () => {
  const app = await started();
  try {
    await rm(app.path);
    await mkdir(app.path); // renaming the new file over a directory fails
    assert.equal((await app.post(envelope(event("j4", "A-4")))).status, 500);
    await rm(app.path, { recursive: true });
    assert.equal((await app.post(envelope(event("j4", "A-4")))).status, 204); // the redelivery
    assert.equal((await app.saved()).orders["A-4"]?.job_id, "j4");
  } finally {
    app.server.close();
  }
});

test("with auth on, a push without a valid token is a 401 and nothing is written", async () => {
  // A stand-in for Google's check (the real one fetches Google's certificates), refusing the token.
  const google = {
    verifyIdToken: async () => {
      throw new Error("Wrong number of segments in token: not-a-jwt");
    },
  };
  const auth = { mode: "google", audience: "https://orders.example.com/relay/job-events", serviceAccount: "relay-app-push@p.iam.gserviceaccount.com" } as const;
  const verify = pushVerifier(auth, google as unknown as OAuth2Client);
  const app = await started({ verify });
  try {
    assert.equal((await app.post(envelope(event("j5", "A-5")))).status, 401);
    assert.equal((await app.post(envelope(event("j5", "A-5")), { Authorization: "Bearer not-a-jwt" })).status, 401);
    assert.deepEqual((await app.saved()).orders, {});
    assert.match(app.lines.join("\n"), /401 no bearer token\n401 token refused: Wrong number of segments/);
  } finally {
    app.server.close();
  }
});

test("the token check refuses a token of another account, and turning it off must be explicit", async () => {
  // A stand-in for Google's check: the token verified, but it was minted by someone else.
  const google = { verifyIdToken: async () => ({ getPayload: () => ({ email: "someone@example.com", email_verified: true }) }) };
  const verify = pushVerifier({ mode: "google", audience: "https://a", serviceAccount: "relay-app-push@p.iam.gserviceaccount.com" }, google as unknown as OAuth2Client);
  await assert.rejects(verify("Bearer x.y.z"), /not Relay's push account/);
  const pusher = { verifyIdToken: async () => ({ getPayload: () => ({ email: "relay-app-push@p.iam.gserviceaccount.com", email_verified: true }) }) };
  await pushVerifier({ mode: "google", audience: "https://a", serviceAccount: "relay-app-push@p.iam.gserviceaccount.com" }, pusher as unknown as OAuth2Client)("Bearer x.y.z");

  assert.throws(() => pushAuthFromEnv({}), /RELAY_PUSH_AUDIENCE/);
  assert.deepEqual(pushAuthFromEnv({ RELAY_PUSH_AUTH: "off" }), { mode: "off" });
  assert.deepEqual(pushAuthFromEnv({ RELAY_PUSH_AUDIENCE: "https://a", RELAY_PUSH_SERVICE_ACCOUNT: "s@p" }), {
    mode: "google",
    audience: "https://a",
    serviceAccount: "s@p",
  });
});
