// graphile-worker through the four workloads (see pgjobs/dev/workloads.py for the
// clock rules), with batched completion and failure (`completeJobBatchDelay` /
// `failJobBatchDelay` = 0) and the pool size its option docs recommend (the larger of
// 10 and concurrentJobs + 2). Its local queue holds concurrentJobs + 1 jobs (its docs'
// starting point), or BENCH_LOCAL_QUEUE_SIZE: the peers' table runs it a second time
// with 500, its performance page's setting for its fastest figures
// (https://worker.graphile.org/docs/performance).
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
const LOCAL_QUEUE_SIZE = Number(process.env.BENCH_LOCAL_QUEUE_SIZE) || 0; // 0: concurrency + 1
const silent = () => () => {};

function preset(url, concurrency, events) {
  return {
    worker: {
      connectionString: url,
      concurrentJobs: concurrency,
      maxPoolSize: Math.max(10, concurrency + 2),
      localQueue: { size: LOCAL_QUEUE_SIZE || concurrency + 1 },
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

// A completed job's row is deleted. "Any row left?" stops at the first live row, where
// count(*) read the whole table (its dead rows too) every 5 ms, a PostgreSQL CPU cost
// pgjobs' own check (two partial indexes) does not pay.
async function allDone(utils) {
  const { rows } = await utils.withPgClient((client) =>
    client.query("SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS done"),
  );
  return rows[0].done;
}

// Planner statistics for the backlog, as autovacuum keeps them on a table in use. A new
// database's jobs table has never been analyzed (nor is it later with autovacuum off):
// the planner then expects a handful of rows, and every fetch of jobs seq-scans and
// sorts the whole backlog instead of reading its jobs_main_index.
async function analyze(utils) {
  await utils.withPgClient((client) => client.query("ANALYZE graphile_worker._private_jobs"));
}

async function drain(utils, { url, count, concurrency }) {
  await utils.addJobs(Array.from({ length: count }, () => ({ identifier: NOOP, payload: {} })));
  await analyze(utils);
  const began = performance.now();
  const runner = await run({
    preset: preset(url, concurrency),
    logger,
    taskList: { [NOOP]: async () => {} },
  });
  await pollUntil(() => allDone(utils));
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
