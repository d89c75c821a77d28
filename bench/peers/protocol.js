// What every Node contender shares with pgjobs.dev.workloads: the command line, the
// percentile method (Python's statistics.quantiles(..., method="inclusive")) and one
// JSON object on stdout.
"use strict";

const { performance } = require("node:perf_hooks");

const WORKLOADS = ["drain", "latency", "bulk", "single"];
const DONE_POLL_MS = 5;
const LATENCY_RATE = 50;

function parseArgs(argv, urlFlag) {
  const [workload, ...rest] = argv;
  if (!WORKLOADS.includes(workload)) {
    fail(`unknown workload ${JSON.stringify(workload)} (one of ${WORKLOADS.join(", ")})`);
  }
  const options = { workload, url: null, count: null, concurrency: 10 };
  for (let i = 0; i < rest.length; i += 2) {
    const [flag, value] = [rest[i], rest[i + 1]];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === urlFlag) options.url = value;
    else if (flag === "--count") options.count = positive(flag, value);
    else if (flag === "--concurrency") options.concurrency = positive(flag, value);
    else fail(`unknown option ${flag}`);
  }
  if (!options.url) fail(`${urlFlag} is required`);
  if (!options.count) fail("--count is required");
  return options;
}

function positive(flag, value) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) fail(`${flag} must be a positive integer, got ${value}`);
  return n;
}

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

function percentile(sorted, pct) {
  if (sorted.length === 0) return NaN;
  if (sorted.length === 1) return sorted[0];
  const m = sorted.length - 1;
  const j = Math.floor((pct * m) / 100);
  const delta = pct * m - j * 100;
  return (sorted[j] * (100 - delta) + sorted[j + 1] * delta) / 100;
}

function latencyFigures(millis) {
  const sorted = [...millis].sort((a, b) => a - b);
  return {
    p50_ms: percentile(sorted, 50),
    p95_ms: percentile(sorted, 95),
    p99_ms: percentile(sorted, 99),
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Resolves when `done()` holds, checking each time `poke` is called; rejects after 10 s.
function arrivals() {
  let waiter = null;
  return {
    poke() {
      if (waiter) waiter();
    },
    async until(done, what) {
      const deadline = performance.now() + 10_000;
      while (!done()) {
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`${what} did not start within 10 s`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        waiter = null;
      }
    },
  };
}

// Paces `count` one-at-a-time jobs at LATENCY_RATE: `enqueue(k)` is timed from just
// before the call to the handler's first line, which calls `ran(k)`. One job (k = -1)
// goes through first, untimed: the client's first connection and the worker's first
// run are not the figure.
async function paceLatency(count, enqueue, ranAt, arrived) {
  await enqueue(-1);
  await arrived.until(() => ranAt.has(-1), "the untimed first latency job");
  const millis = [];
  const interval = 1000 / LATENCY_RATE;
  for (let k = 0; k < count; k++) {
    const nextAt = performance.now() + interval;
    const began = performance.now();
    await enqueue(k);
    await arrived.until(() => ranAt.has(k), `latency job ${k}`);
    millis.push(ranAt.get(k) - began);
    await sleep(Math.max(0, nextAt - performance.now()));
  }
  return latencyFigures(millis);
}

async function pollUntil(check) {
  while (!(await check())) await sleep(DONE_POLL_MS);
}

function emit(result) {
  process.stdout.write(JSON.stringify(result) + "\n");
}

module.exports = {
  arrivals,
  emit,
  fail,
  paceLatency,
  parseArgs,
  performance,
  pollUntil,
  sleep,
};
