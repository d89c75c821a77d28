// BullMQ through the four workloads (see pgjobs/dev/workloads.py for the clock rules),
// with its defaults: completed jobs are kept, so "recorded done" is the queue's
// completed count reaching N. The Redis database in --redis-url is flushed first.
//
//   node bullmq.js <drain|latency|bulk|single> --redis-url redis://host:port/db --count N
"use strict";

const { Queue, Worker } = require("bullmq");
const { Redis } = require("ioredis");
const {
  arrivals,
  emit,
  paceLatency,
  parseArgs,
  performance,
  pollUntil,
} = require("./protocol");

const QUEUE = "bench";
const NOOP = "bench-noop";
const LATENCY = "bench-latency";

function connectionOf(redisUrl) {
  const url = new URL(redisUrl);
  return {
    host: url.hostname,
    port: Number(url.port || 6379),
    db: Number(url.pathname.slice(1) || 0),
    maxRetriesPerRequest: null, // what BullMQ requires of a worker's connection
  };
}

async function drain(queue, connection, { count, concurrency }) {
  await queue.addBulk(Array.from({ length: count }, () => ({ name: NOOP, data: {} })));
  const began = performance.now();
  const worker = new Worker(QUEUE, async () => {}, { connection, concurrency });
  await pollUntil(async () => (await queue.getCompletedCount()) >= count);
  const seconds = (performance.now() - began) / 1000;
  await worker.close();
  return { jobs_per_s: count / seconds, seconds };
}

async function latency(queue, connection, { count, concurrency }) {
  const ranAt = new Map();
  const arrived = arrivals();
  const worker = new Worker(
    QUEUE,
    async (job) => {
      ranAt.set(job.data.k, performance.now());
      arrived.poke();
    },
    { connection, concurrency },
  );
  try {
    await worker.waitUntilReady();
    return await paceLatency(count, (k) => queue.add(LATENCY, { k }), ranAt, arrived);
  } finally {
    await worker.close();
  }
}

async function bulk(queue, _connection, { count }) {
  await queue.add(NOOP, {}); // the connection's first command is not the figure
  const began = performance.now();
  await queue.addBulk(Array.from({ length: count }, (_, n) => ({ name: NOOP, data: { n } })));
  const seconds = (performance.now() - began) / 1000;
  return { jobs_per_s: count / seconds, seconds };
}

async function single(queue, _connection, { count }) {
  await queue.add(NOOP, {});
  const began = performance.now();
  for (let n = 0; n < count; n++) await queue.add(NOOP, { n });
  const seconds = (performance.now() - began) / 1000;
  return { jobs_per_s: count / seconds, seconds };
}

async function flush(connection) {
  const client = new Redis(connection);
  try {
    await client.flushdb();
  } finally {
    client.disconnect();
  }
}

const WORKLOADS = { drain, latency, bulk, single };

async function main() {
  const options = parseArgs(process.argv.slice(2), "--redis-url");
  const connection = connectionOf(options.url);
  await flush(connection);
  const queue = new Queue(QUEUE, { connection });
  try {
    emit(await WORKLOADS[options.workload](queue, connection, options));
  } finally {
    await queue.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
