// Cancel an order's restoration: the customer gave up, so stop paying for the GPU. Relay asks
// Replicate to cancel the job's prediction and answers at once; the job ends `canceled`, and the
// job-events push (server.ts) marks the order `restoration_canceled` like any other end.
//
//   npm run cancel -- --job JOB_ID [--json]
//
// Exit codes: 0 cancel requested, 3 the job had already ended (nothing canceled), 1 refused by Relay
// (no such job) or unreachable, 2 a usage error.
// The job id is the one the trigger printed (`job_id` of its answer): the app keeps it on its order.
// Same variables as the trigger: RELAY_API_URL, RELAY_API_AUTH, RELAY_API_AUDIENCE.
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { type Job, PROBLEM, type RelayApi, RelayApiError } from "./api.js";
import { API_OPTIONS, UsageError, apiFromEnv, failed } from "./trigger.js";

export interface Cancellation {
  /** True: Relay asked Replicate to stop the job. False: the job had already ended; nothing to stop. */
  requested: boolean;
  /** The job as Relay answered: still open, `cancel_requested_at` set; or, when it had ended, as it ended. */
  job: Job;
}

/**
 * Cancel one order's job. Safe to repeat: a second cancel of a job being canceled is answered as the
 * first. A job that has already ended (the restoration finished, or failed, before the cancel) is
 * not an error here: the order is told its end by job-events anyway. No such job is a RelayApiError 404.
 */
export async function cancelRestoration(api: RelayApi, jobId: string): Promise<Cancellation> {
  try {
    return { requested: true, job: await api.cancelJob(jobId) };
  } catch (error) {
    if (!(error instanceof RelayApiError && error.problem.type === `${PROBLEM}job-final`)) throw error;
  }
  const job = await api.getJob(jobId);
  if (job === null) throw new Error(`job ${jobId} was final a moment ago and is now gone`);
  return { requested: false, job };
}

export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        job: { type: "string" },
        ...API_OPTIONS,
      },
      strict: true,
    }).values;
  } catch (error) {
    console.error(`usage: npm run cancel -- --job JOB_ID [--api URL] [--no-auth] [--json]\n${String(error)}`);
    return 2;
  }
  try {
    if (!args.job) throw new UsageError("--job is required: the job id the trigger printed");
    const api = apiFromEnv(process.env, { api: args.api, noAuth: args["no-auth"] });
    const { requested, job } = await cancelRestoration(api, args.job);
    const order = job.metadata?.order ?? null;
    if (args.json) {
      console.log(JSON.stringify({ order, job_id: job.job_id, state: job.state, cancel_requested_at: job.cancel_requested_at, requested }));
    } else if (requested) {
      console.log(`order ${order ?? "-"}: job ${job.job_id} cancel requested (${job.state}); the order is told when it ends`);
    } else {
      console.log(`order ${order ?? "-"}: job ${job.job_id} had already ended (${job.state}); nothing to cancel`);
    }
    return requested ? 0 : 3;
  } catch (error) {
    return failed(error, `Relay refused the cancel of job ${args.job}`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  process.exitCode = await main(process.argv.slice(2));
}
