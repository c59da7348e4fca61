#!/usr/bin/env node
// Benchmark peer: latency of execute() in the official @cmdop/node SDK, used
// unchanged, against a CMDOP control plane. Prints one JSON record in the
// format of bench/c/bench_common.h.
//
//   node execute_bench.cjs --server HOST:PORT --machine HOSTNAME --subject ID \
//        [--label TEXT] [--runs N] [--warmup N] [--poll-ms N] [--command CMD]
//
// The API key comes from CMDOP_API_KEY. Without --poll-ms the SDK's default
// poll interval is used. The SDK must be loaded with require(): its ESM entry
// is broken on Node 20.
'use strict';

const { parseArgs } = require('node:util');

let sdk;
try {
  sdk = require('@cmdop/node');
} catch (err) {
  console.error(`cannot load @cmdop/node (run "npm ci" in ${__dirname}): ${err.message}`);
  process.exit(2);
}

const { values: opt } = parseArgs({
  options: {
    server: { type: 'string' },
    machine: { type: 'string' },
    subject: { type: 'string', default: 'node-sdk' },
    label: { type: 'string' },
    runs: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '2' },
    'poll-ms': { type: 'string' },
    command: { type: 'string', default: 'true' },
    'ready-timeout-ms': { type: 'string', default: '20000' },
  },
});

function fail(msg) {
  console.error(`execute_bench: ${msg}`);
  process.exit(2);
}

function count(name) {
  const n = Number(opt[name]);
  if (!Number.isInteger(n) || n < 0) fail(`--${name} must be a non-negative integer, got ${opt[name]}`);
  return n;
}

const apiKey = process.env.CMDOP_API_KEY;
if (!apiKey) fail('set CMDOP_API_KEY to the control plane API key');
if (!opt.server || !opt.machine) fail('--server HOST:PORT and --machine HOSTNAME are required');
const runs = count('runs');
const warmup = count('warmup');
const readyTimeoutMs = count('ready-timeout-ms');
const execOptions = { timeoutMs: 30_000 };
if (opt['poll-ms'] !== undefined) execOptions.pollIntervalMs = count('poll-ms');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The agent's terminal session can appear a moment after enrollment.
async function selectMachine(client) {
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    try {
      await client.setMachine(opt.machine);
      return;
    } catch (err) {
      if (Date.now() > deadline) fail(`machine ${opt.machine} not available: ${err.message}`);
      await sleep(100);
    }
  }
}

async function main() {
  const client = CMDOPClient.remote(apiKey, { server: opt.server, insecure: true });
  try {
    await selectMachine(client);
    for (let i = 0; i < warmup; i++) await client.terminal.execute(opt.command, execOptions);
    const samples = [];
    let errors = 0;
    let firstError = null;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < runs; i++) {
      const s = process.hrtime.bigint();
      const r = await client.terminal.execute(opt.command, execOptions);
      const us = Number(process.hrtime.bigint() - s) / 1000;
      if (r.exitCode === 0) {
        samples.push(us);
      } else {
        errors += 1;
        firstError = firstError || `exit ${r.exitCode}: ${r.output.slice(0, 200)}`;
      }
    }
    const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
    if (firstError) console.error(`execute_bench: first failure: ${firstError}`);
    process.stdout.write(JSON.stringify({
      case: 'latency',
      subject: opt.subject,
      label: opt.label || opt.subject,
      runs,
      concurrency: 1,
      wall_s: wallS,
      ops_per_s: wallS > 0 ? (runs - errors) / wallS : 0,
      errors,
      bytes: 0,
      rss_kb: { client: Math.round(process.resourceUsage().maxRSS) },
      samples_us: samples.map((v) => Math.round(v * 1000) / 1000),
    }) + '\n');
    return errors === runs ? 1 : 0;
  } finally {
    await client.close();
  }
}

const { CMDOPClient } = sdk;
main().then((code) => process.exit(code), (err) => fail(err.stack || String(err)));
