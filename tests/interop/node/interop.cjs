#!/usr/bin/env node
// Interop test: drives the official Node SDK @cmdop/node (2026.3.1800) against a
// CMDOP control plane (ours) with one connected agent.
//
// Environment (all required unless marked optional):
//   CMDOP_SERVER          host:port of the control plane, plaintext gRPC
//   CMDOP_API_KEY         API key (sent as `authorization: Bearer <key>`)
//   CMDOP_TEST_HOSTNAME   hostname the agent registered with
//   CMDOP_TEST_DIR        directory on the agent machine holding `hello.txt`
//                         (content "hello from interop\n") and a subdirectory `sub`
//   CMDOP_TEST_TIMEOUT_MS optional overall watchdog, default 60000
//
// Output: one line per check, then exactly "N passed, 0 failed" (exit 0), or
// "N passed, M failed" (exit 1). The SDK must be loaded with require(): its ESM
// entry is broken on Node 20.
'use strict';

const assert = require('node:assert/strict');

let sdk;
try {
  sdk = require('@cmdop/node');
} catch (err) {
  console.error(`cannot load @cmdop/node (run "npm install" in ${__dirname}): ${err.message}`);
  process.exit(1);
}
const { CMDOPClient, CMDOPError, NotFoundError, SessionError } = sdk;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing required environment variable ${name}`);
    process.exit(1);
  }
  return v;
}

const SERVER = requireEnv('CMDOP_SERVER');
const API_KEY = requireEnv('CMDOP_API_KEY');
const HOSTNAME = requireEnv('CMDOP_TEST_HOSTNAME');
const TEST_DIR = requireEnv('CMDOP_TEST_DIR').replace(/\/+$/, '') || '/';
const OVERALL_TIMEOUT_MS = Number(process.env.CMDOP_TEST_TIMEOUT_MS || 60_000);
const CHECK_TIMEOUT_MS = 25_000; // per check; execute() itself gives up after 20 s

const HELLO_PATH = `${TEST_DIR}/hello.txt`;
const HELLO_CONTENT = 'hello from interop\n';

// ---------------------------------------------------------------------------
// Tiny check runner
// ---------------------------------------------------------------------------

let passed = 0;
let failed = 0;
let current = null;
const clients = [];

function summaryAndExit(code) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code);
}

// Overall watchdog: the test must never hang (a stuck RPC, a never-ending poll).
const watchdog = setTimeout(() => {
  console.log(`FAIL watchdog: overall timeout after ${OVERALL_TIMEOUT_MS} ms` +
    (current ? ` (while running "${current}")` : ''));
  failed += 1;
  summaryAndExit(1);
}, OVERALL_TIMEOUT_MS);

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function check(name, fn) {
  current = name;
  try {
    const detail = await withTimeout(Promise.resolve().then(fn), CHECK_TIMEOUT_MS, name);
    passed += 1;
    console.log(`ok   ${name}${detail ? ` (${detail})` : ''}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}`);
    console.log(String((err && err.stack) || err).replace(/^/gm, '     '));
  } finally {
    current = null;
  }
}

function newClient() {
  // `server` takes precedence over the CMDOP_GRPC_SERVER env var / configure();
  // `insecure: true` selects ChannelCredentials.createInsecure() (plaintext h2c).
  const c = CMDOPClient.remote(API_KEY, { server: SERVER, insecure: true });
  clients.push(c);
  return c;
}

async function expectReject(promise, predicate, what) {
  let result;
  try {
    result = await promise;
  } catch (err) {
    assert.ok(predicate(err), `${what}: unexpected error ${err && err.name}: ${err && err.message}`);
    return err;
  }
  assert.fail(`${what}: expected a rejection, got ${JSON.stringify(result)}`);
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

async function main() {
  console.log(`@cmdop/node interop against ${SERVER}, host "${HOSTNAME}", dir "${TEST_DIR}"`);
  const client = newClient();
  let connectedIds = [];
  let sessionId = '';

  await check('HealthCheck reports healthy', async () => {
    const h = await client.healthCheck();
    assert.equal(h.healthy, true);
    return `version=${h.version} active_sessions=${h.activeSessions}`;
  });

  await check('ListSessions shows the agent as connected', async () => {
    const { sessions, total } = await client.terminal.list();
    assert.ok(Array.isArray(sessions) && sessions.length >= 1, 'no sessions listed');
    const mine = sessions.filter((s) => s.hostname === HOSTNAME && s.status === 'connected');
    assert.ok(mine.length >= 1,
      `no connected session with hostname ${HOSTNAME}; got ${JSON.stringify(
        sessions.map((s) => [s.hostname, s.status]))}`);
    for (const s of mine) assert.ok(s.sessionId, 'empty session_id');
    connectedIds = mine.map((s) => s.sessionId);
    return `${sessions.length} listed, total=${total}`;
  });

  await check('ListSessions honours hostname_filter + status_filter', async () => {
    const { sessions } = await client.terminal.list({ hostname: HOSTNAME, status: 'connected', limit: 5 });
    assert.ok(sessions.length >= 1, 'filtered list is empty');
    for (const s of sessions) {
      assert.equal(s.status, 'connected');
      assert.ok((s.hostname || '').toLowerCase().includes(HOSTNAME.toLowerCase()),
        `row hostname ${s.hostname} does not match filter ${HOSTNAME}`);
    }
  });

  await check('GetSessionByHostname for an unknown host is a SessionError', async () => {
    const err = await expectReject(
      client.terminal.getSessionByHostname('no-such-host-cmdop-interop', false),
      (e) => e instanceof SessionError, 'unknown hostname');
    return err.message;
  });

  await check('setMachine(hostname) resolves the connected session', async () => {
    await client.setMachine(HOSTNAME); // GetSessionByHostname{partial_match:true} x4 services
    const info = client.terminal.currentSession;
    assert.ok(info && info.sessionId, 'setMachine cached no session id');
    assert.equal(info.hostname, HOSTNAME);
    if (connectedIds.length) {
      assert.ok(connectedIds.includes(info.sessionId),
        `session ${info.sessionId} not among listed ${connectedIds}`);
    }
    assert.equal(client.files.getSessionId(), info.sessionId);
    sessionId = info.sessionId;
    return `session ${sessionId} status=${info.status}`;
  });

  await check('execute: output and non-zero exit code', async () => {
    // `(exit 3)` not `exit 3`: execute() appends `; printf END $?` to the same shell
    // line, so a bare `exit` would kill the session's shell before the END marker.
    const r = await client.terminal.execute('echo interop-ok; (exit 3)',
      { timeoutMs: 20_000, pollIntervalMs: 100 });
    assert.equal(r.exitCode, 3, `exit code ${r.exitCode}, output ${JSON.stringify(r.output)}`);
    assert.ok(r.output.includes('interop-ok'), `output ${JSON.stringify(r.output)}`);
  });

  await check('execute: echo hi exits 0 with clean output', async () => {
    const r = await client.terminal.execute('echo hi', { timeoutMs: 20_000, pollIntervalMs: 100 });
    assert.equal(r.exitCode, 0, `exit code ${r.exitCode}, output ${JSON.stringify(r.output)}`);
    assert.equal(r.output.trim(), 'hi');
  });

  await check('FileListDirectory lists hello.txt (file) and sub (directory)', async () => {
    const { entries, totalCount } = await client.files.list(TEST_DIR);
    const byName = new Map(entries.map((e) => [e.name, e]));
    const hello = byName.get('hello.txt');
    const sub = byName.get('sub');
    assert.ok(hello, `hello.txt missing from ${JSON.stringify([...byName.keys()])}`);
    assert.ok(sub, `sub missing from ${JSON.stringify([...byName.keys()])}`);
    assert.equal(hello.type, 'file');
    assert.equal(sub.type, 'directory');
    assert.equal(hello.size, Buffer.byteLength(HELLO_CONTENT));
    return `${entries.length} entries, total_count=${totalCount}`;
  });

  await check('FileRead returns the exact content of hello.txt', async () => {
    const r = await client.files.read(HELLO_PATH);
    assert.ok(Buffer.isBuffer(r.content));
    assert.equal(r.content.toString('utf8'), HELLO_CONTENT);
  });

  await check('FileRead of a missing file rejects with NotFoundError', async () => {
    // Failures are gRPC statuses (the Python SDK ignores success=false); the
    // SDK maps NOT_FOUND to its NotFoundError, carrying the agent's text.
    const err = await expectReject(client.files.read(`${TEST_DIR}/does-not-exist.txt`),
      (e) => e instanceof NotFoundError, 'missing file');
    assert.ok(/no such file/.test(err.message), `server sent no error text: ${err.message}`);
    return err.message;
  });

  await check('setSessionId (x-cmdop-agent-id header) + FileRead on a second client', async () => {
    assert.ok(sessionId, 'no session id from setMachine');
    const c2 = newClient();
    c2.setSessionId(sessionId); // adds x-cmdop-agent-id: <session id> to every call
    const r = await c2.files.read(HELLO_PATH);
    assert.equal(r.content.toString('utf8'), HELLO_CONTENT);
  });
}

main()
  .catch((err) => {
    failed += 1;
    console.log(`FAIL unexpected: ${(err && err.stack) || err}`);
  })
  .then(async () => {
    clearTimeout(watchdog);
    await Promise.allSettled(clients.map((c) => c.close()));
    summaryAndExit(failed === 0 ? 0 : 1);
  });
