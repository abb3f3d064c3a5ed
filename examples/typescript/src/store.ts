// The app's orders, as small as an example allows: one JSON file, rewritten whole on each change
// (a temporary file, fsync, rename), changes one at a time. A real app writes its orders table and
// the handled event id in one database transaction instead (docs/APP.md, "Answering").
import { randomUUID } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

import type { FinalState, JobEvent } from "./job-event.js";

export interface OrderRecord {
  /** The order's restoration is over: the photo is restored, the restoration was canceled, or it failed. */
  done: true;
  status: "restored" | "restoration_canceled" | "restoration_failed";
  state: FinalState;
  job_id: string;
  prediction_id: string | null;
  /** The restored photo's copies in Cloud Storage. */
  outputs: string[];
  error: unknown;
  error_code: string | null;
  completed_at: string | null;
  received_at: string;
  /** The job event as received, metadata included. */
  event: JobEvent;
}

export interface StoreData {
  orders: Record<string, OrderRecord>;
  /** Every event_id acted on, so a redelivery or a second announcement is dropped. */
  handled_event_ids: string[];
  /** Final jobs that carry no order number: acknowledged, nothing to do. */
  ignored_event_ids: string[];
}

/** What the order shows for its job's end: canceled is the app's own doing (cancel.ts), not a failure. */
export function orderStatus(state: FinalState): OrderRecord["status"] {
  if (state === "succeeded") return "restored";
  return state === "canceled" ? "restoration_canceled" : "restoration_failed";
}

export type Outcome = "recorded" | "duplicate" | "not-an-order";

export class OrderStore {
  #data: StoreData = { orders: {}, handled_event_ids: [], ignored_event_ids: [] };
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(readonly path: string) {}

  static async open(path: string): Promise<OrderStore> {
    const store = new OrderStore(path);
    try {
      store.#data = JSON.parse(await readFile(path, "utf8")) as StoreData;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      await store.#write(store.#data);
    }
    return store;
  }

  get data(): StoreData {
    return structuredClone(this.#data);
  }

  /** Mark the event's order done; resolves once that is on disk. Duplicates change nothing. */
  record(event: JobEvent): Promise<Outcome> {
    const run = this.#queue.then(() => this.#record(event));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #record(event: JobEvent): Promise<Outcome> {
    const seen = this.#data.handled_event_ids.includes(event.event_id) || this.#data.ignored_event_ids.includes(event.event_id);
    if (seen) return "duplicate";
    const next = structuredClone(this.#data);
    const order = event.metadata.order;
    if (order === undefined) {
      next.ignored_event_ids.push(event.event_id);
    } else {
      next.orders[order] = {
        done: true,
        status: orderStatus(event.state),
        state: event.state,
        job_id: event.job_id,
        prediction_id: event.prediction_id,
        outputs: event.outputs.map((output) => output.gs_uri),
        error: event.error,
        error_code: event.error_code,
        completed_at: event.completed_at,
        received_at: new Date().toISOString(),
        event,
      };
      next.handled_event_ids.push(event.event_id);
    }
    await this.#write(next); // throws: memory keeps the old state, the push is answered 500
    this.#data = next;
    return order === undefined ? "not-an-order" : "recorded";
  }

  async #write(data: StoreData): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    const temporary = `${this.path}.${randomUUID()}.tmp`;
    try {
      const file = await open(temporary, "wx");
      try {
        await file.writeFile(`${JSON.stringify(data, null, 2)}\n`, "utf8");
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(temporary, this.path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
  }
}
