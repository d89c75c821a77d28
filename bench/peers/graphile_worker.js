// graphile-worker through the four workloads (see pgjobs/dev/workloads.py for the
// clock rules). Configured as its performance page's fastest setup: a local queue
// (size = concurrency + 1, the size its docs suggest starting from) and batched
// completion and failure (`completeJobBatchDelay` / `failJobBatchDelay` = 0).
//
//   node graphile_worker.js <drain|latency|bulk|single> --database-url URL --count N
"use strict";

const { EventEmitter } = require("node:events");
const { Logger, makeWorkerUtils, run, runMigrations } = require("graphile-worker");
const {
  arrivals,
  emit,
  paceLatency,
  parseArgs,
  performance,
  pollUntil,
} = require("./protocol");

const NOOP = "bench_noop";
const LATENCY = "bench_latency";
const silent = () => () => {};

function preset(url, concurrency, events) {
  return {
    worker: {
      connectionString: url,
      concurrentJobs: concurrency,
      localQueue: { size: concurrency + 1 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
      ...(events ? { events } : {}),
    },
  };
}

const logger = new Logger(silent);

async function reset(utils) {
  await utils.withPgClient((client) =>
    client.query(
      "TRUNCATE graphile_worker._private_jobs, graphile_worker._private_job_queues CASCADE",
    ),
  );
  await utils.withPgClient((client) => client.query("VACUUM ANALYZE graphile_worker._private_jobs"));
}

async function unfinished(utils) {
  const { rows } = await utils.withPgClient((client) =>
    client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs"),
  );
  return rows[0].n;
}

async function drain(utils, { url, count, concurrency }) {
  await utils.addJobs(Array.from({ length: count }, () => ({ identifier: NOOP, payload: {} })));
  const began = performance.now();
  const runner = await run({
    preset: preset(url, concurrency),
    logger,
    taskList: { [NOOP]: async () => {} },
  });
  await pollUntil(async () => (await unfinished(utils)) === 0);
  const seconds = (performance.now() - began) / 1000;
  await runner.stop();
  return { jobs_per_s: count / seconds, seconds };
}

async function latency(utils, { url, count, concurrency }) {
  const ranAt = new Map();
  const arrived = arrivals();
  const events = new EventEmitter();
  const listening = new Promise((resolve) => events.once("pool:listen:success", resolve));
  const runner = await run({
    preset: preset(url, concurrency, events),
    logger,
    taskList: {
      [LATENCY]: async (payload) => {
        ranAt.set(payload.k, performance.now());
        arrived.poke();
      },
    },
  });
  try {
    await listening;
    return await paceLatency(count, (k) => utils.addJob(LATENCY, { k }), ranAt, arrived);
  } finally {
    await runner.stop();
  }
}

async function bulk(utils, { count }) {
  await utils.addJob(NOOP, {}); // the pool's first connection is not the figure
  const began = performance.now();
  const specs = Array.from({ length: count }, (_, n) => ({ identifier: NOOP, payload: { n } }));
  await utils.addJobs(specs);
  const seconds = (performance.now() - began) / 1000;
  return { jobs_per_s: count / seconds, seconds };
}

async function single(utils, { count }) {
  await utils.addJob(NOOP, {});
  const began = performance.now();
  for (let n = 0; n < count; n++) await utils.addJob(NOOP, { n });
  const seconds = (performance.now() - began) / 1000;
  return { jobs_per_s: count / seconds, seconds };
}

const WORKLOADS = { drain, latency, bulk, single };

async function main() {
  const options = parseArgs(process.argv.slice(2), "--database-url");
  await runMigrations({ connectionString: options.url, logger });
  const utils = await makeWorkerUtils({ connectionString: options.url, logger });
  try {
    await reset(utils);
    emit(await WORKLOADS[options.workload](utils, options));
  } finally {
    await utils.release();
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
