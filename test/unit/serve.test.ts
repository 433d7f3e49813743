import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { type ServeConfigInput, serveSchema } from '../../src/schedule/config.js';
import { ciVerdict, secretFromEnv, signBody, signTrigger, startServer, type TriggerServer, verifySignature } from '../../src/schedule/serve.js';
import type { LoopStarter, StartRequest, StartResult, TriggerEvent } from '../../src/schedule/starter.js';

const SECRET = 'test-secret-0123456789abcdef-0123456789';

interface Harness {
  server: TriggerServer;
  requests: StartRequest[];
  events: TriggerEvent[];
}

const servers: TriggerServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

async function serve(
  options: {
    config?: ServeConfigInput;
    answer?: (request: StartRequest) => StartResult | Promise<StartResult>;
    tasks?: Record<string, string>;
    timeouts?: { headersMs?: number; requestMs?: number };
  } = {},
): Promise<Harness> {
  const requests: StartRequest[] = [];
  const events: TriggerEvent[] = [];
  let n = 0;
  const answer = options.answer ?? (() => ({ started: true as const, runId: `run-${++n}` }));
  const starter: LoopStarter = {
    start(request) {
      requests.push(request);
      return Promise.resolve(answer(request));
    },
  };
  const tasks = options.tasks ?? { nightly: 'tasks/nightly.md' };
  const config = serveSchema.parse({ port: 0, github: { task: 'tasks/fix-ci.md' }, ...options.config });
  const server = await startServer({ config, secret: SECRET, starter, resolveTask: (name) => tasks[name], log: (e) => void events.push(e), timeouts: options.timeouts });
  servers.push(server);
  return { server, requests, events };
}

let deliveries = 0;
const nextDelivery = (): string => `d-${process.pid}-${++deliveries}`;

let runIds = 0;
/** A workflow_run payload; like GitHub's, each one differs (its run id), so each has its own signature. */
function workflowRun(conclusion: string, action = 'completed'): Record<string, unknown> {
  return {
    action,
    workflow_run: { id: ++runIds, name: 'CI', conclusion, head_branch: 'main', head_sha: 'abc123', html_url: 'https://github.com/o/r/actions/runs/1' },
    repository: { full_name: 'o/r' },
  };
}

async function github(
  h: Harness,
  event: string,
  payload: unknown,
  headers: { delivery?: string; signature?: string | null; body?: string } = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const body = headers.body ?? JSON.stringify(payload);
  const sent: Record<string, string> = { 'Content-Type': 'application/json', 'X-GitHub-Event': event, 'X-GitHub-Delivery': headers.delivery ?? nextDelivery() };
  if (headers.signature !== null) sent['X-Hub-Signature-256'] = headers.signature ?? signBody(SECRET, body);
  const res = await fetch(`${h.server.url}/hooks/github`, { method: 'POST', headers: sent, body });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** The headers a /trigger caller sends: timestamp, delivery id, and the signature over both and the body. */
type TriggerHeaders = { 'Content-Type': string; 'X-Loopbox-Timestamp': string; 'X-Loopbox-Delivery': string; 'X-Loopbox-Signature-256': string };
function triggerHeaders(body: string, delivery = nextDelivery(), timestamp = String(Math.floor(Date.now() / 1000))): TriggerHeaders {
  return {
    'Content-Type': 'application/json',
    'X-Loopbox-Timestamp': timestamp,
    'X-Loopbox-Delivery': delivery,
    'X-Loopbox-Signature-256': signTrigger(SECRET, timestamp, delivery, body),
  };
}

async function trigger(h: Harness, payload: unknown, options: { delivery?: string; body?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; body: Record<string, unknown> }> {
  const body = options.body ?? JSON.stringify(payload);
  const res = await fetch(`${h.server.url}/trigger`, { method: 'POST', headers: options.headers ?? triggerHeaders(body, options.delivery), body });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

function refusals(h: Harness): TriggerEvent[] {
  return h.events.filter((e) => e.event === 'webhook-refused');
}

describe('loopbox serve', () => {
  it('answers /healthz with the start queue length', async () => {
    const h = await serve();
    expect(h.server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${h.server.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true, queue: 0 });
  });

  it('starts the GitHub task for a signed failed workflow_run (202 with the run id)', async () => {
    const h = await serve();
    const res = await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'gh-1' });
    expect(res).toMatchObject({ status: 202, body: { runId: 'run-1', task: 'fix-ci' } });
    expect(h.requests).toEqual([{ taskFile: 'tasks/fix-ci.md', trigger: 'webhook:github:workflow_run:gh-1' }]);
    expect(h.events).toContainEqual(expect.objectContaining({ event: 'webhook-started', runId: 'run-1', repository: 'o/r', branch: 'main', conclusion: 'failure' }));
    const timedOut = await github(h, 'workflow_run', workflowRun('timed_out'));
    expect(timedOut.status).toBe(202);
    expect(h.requests).toHaveLength(2);
  });

  it('starts on a failed check_suite', async () => {
    const h = await serve();
    const res = await github(h, 'check_suite', { action: 'completed', check_suite: { conclusion: 'failure', head_branch: 'main' } }, { delivery: 'cs-1' });
    expect(res.status).toBe(202);
    expect(h.requests).toEqual([{ taskFile: 'tasks/fix-ci.md', trigger: 'webhook:github:check_suite:cs-1' }]);
  });

  it('ignores successful, cancelled and unfinished runs and other events (202 ignored)', async () => {
    const h = await serve();
    for (const [event, payload] of [
      ['workflow_run', workflowRun('success')],
      ['workflow_run', workflowRun('cancelled')],
      ['workflow_run', workflowRun('failure', 'requested')],
      ['check_suite', { action: 'completed', check_suite: { conclusion: 'success' } }],
      ['push', { ref: 'refs/heads/main' }],
    ] as const) {
      const res = await github(h, event, payload);
      expect(res.status, event).toBe(202);
      expect(res.body.ignored, event).toEqual(expect.any(String));
    }
    expect(h.requests).toEqual([]);
  });

  it('ignores events left out of serve.github.events', async () => {
    const h = await serve({ config: { github: { task: 'tasks/fix-ci.md', events: ['workflow_run'] } } });
    const res = await github(h, 'check_suite', { action: 'completed', check_suite: { conclusion: 'failure' } });
    expect(res).toMatchObject({ status: 202, body: { ignored: 'event check_suite is not in serve.github.events' } });
    expect(h.requests).toEqual([]);
  });

  it('answers a signed ping with 200', async () => {
    const h = await serve();
    const res = await github(h, 'ping', { zen: 'Keep it logically awesome.', hook: { events: ['workflow_run'] } });
    expect(res).toEqual(expect.objectContaining({ status: 200, body: { ok: true, pong: true } }));
    expect(h.requests).toEqual([]);
  });

  it('refuses an unsigned request with 401 without reading on', async () => {
    const h = await serve();
    const res = await github(h, 'workflow_run', workflowRun('failure'), { signature: null });
    expect(res).toMatchObject({ status: 401, body: { error: 'missing signature' } });
    expect(h.requests).toEqual([]);
    expect(refusals(h)[0]).toMatchObject({ status: 401, reason: 'missing signature', path: '/hooks/github' });
    expect(String(refusals(h)[0]?.remote)).toMatch(/127\.0\.0\.1/);
  });

  it('refuses a garbled or wrong signature with 401 and never logs the secret', async () => {
    const h = await serve();
    const body = JSON.stringify(workflowRun('failure'));
    for (const [signature, reason] of [
      ['sha1=abc', 'malformed signature'],
      ['sha256=zz', 'malformed signature'],
      ['sha256=abcd', 'malformed signature'],
      [signBody('not-the-secret', body), 'bad signature'],
      [signBody(SECRET, `${body} `), 'bad signature'], // the signature of another body
    ] as const) {
      const res = await github(h, 'workflow_run', undefined, { body, signature });
      expect(res, signature).toMatchObject({ status: 401, body: { error: reason } });
    }
    expect(h.requests).toEqual([]);
    expect(refusals(h)).toHaveLength(5);
    expect(JSON.stringify(h.events)).not.toContain(SECRET);
  });

  it('refuses a body over maxBodyBytes with 413 (declared length and chunked)', async () => {
    const h = await serve({ config: { maxBodyBytes: 1024 } });
    const big = JSON.stringify({ ...workflowRun('failure'), padding: 'x'.repeat(4096) });
    const res = await github(h, 'workflow_run', undefined, { body: big });
    expect(res).toMatchObject({ status: 413, body: { error: 'body over 1024 bytes' } });

    // Chunked, no Content-Length: the server stops reading at the cap and answers.
    const url = new URL(`${h.server.url}/hooks/github`);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(
        { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { 'X-GitHub-Event': 'workflow_run', 'X-GitHub-Delivery': nextDelivery(), 'X-Hub-Signature-256': signBody(SECRET, big), 'Transfer-Encoding': 'chunked' } },
        (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.write(big.slice(0, 800));
      setTimeout(() => req.write(big.slice(800, 2000)), 20);
    });
    expect(status).toBe(413);
    expect(h.requests).toEqual([]);
  });

  it('refuses a replayed delivery id with 409', async () => {
    const h = await serve();
    expect((await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'same' })).status).toBe(202);
    const again = await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'same' });
    expect(again).toMatchObject({ status: 409, body: { error: 'replayed delivery id or signature' } });
    expect(h.requests).toHaveLength(1);
  });

  it('does not let an unsigned request burn a delivery id', async () => {
    const h = await serve();
    expect((await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'd-x', signature: signBody('wrong', 'x') })).status).toBe(401);
    expect((await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'd-x' })).status).toBe(202);
  });

  it('forgets only the oldest ids beyond replayWindow', async () => {
    const h = await serve({ config: { replayWindow: 2 } });
    for (const id of ['a', 'b', 'c']) expect((await github(h, 'ping', { id }, { delivery: id })).status).toBe(200);
    expect((await github(h, 'ping', { id: 'c' }, { delivery: 'c' })).status).toBe(409);
    expect((await github(h, 'ping', { id: 'a' }, { delivery: 'a' })).status).toBe(200);
  });

  it('requires X-GitHub-Event and X-GitHub-Delivery (400)', async () => {
    const h = await serve();
    const body = JSON.stringify(workflowRun('failure'));
    const res = await fetch(`${h.server.url}/hooks/github`, { method: 'POST', headers: { 'X-Hub-Signature-256': signBody(SECRET, body), 'X-GitHub-Event': 'workflow_run' }, body });
    expect(res.status).toBe(400);
    const res2 = await fetch(`${h.server.url}/hooks/github`, { method: 'POST', headers: { 'X-Hub-Signature-256': signBody(SECRET, body), 'X-GitHub-Delivery': 'd' }, body });
    expect(res2.status).toBe(400);
  });

  it('answers 202 busy, not a second loop, when the task is already running', async () => {
    const h = await serve({ answer: () => ({ started: false, reason: 'busy', detail: 'run r1 of fix-ci is running' }) });
    const res = await github(h, 'workflow_run', workflowRun('failure'));
    expect(res).toMatchObject({ status: 202, body: { busy: 'run r1 of fix-ci is running', task: 'fix-ci' } });
    expect(res.body.runId).toBeUndefined();
  });

  it('answers 429 with Retry-After when the starter says queue-full, and lets a redelivery retry', async () => {
    let full = true;
    const h = await serve({ answer: () => (full ? { started: false, reason: 'queue-full', detail: '4 loops queued' } : { started: true, runId: 'r9' }) });
    const res = await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'retry-me' });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('30');
    full = false;
    // GitHub redelivers with the same X-GitHub-Delivery: a refused one must not count as a replay.
    const again = await github(h, 'workflow_run', workflowRun('failure'), { delivery: 'retry-me' });
    expect(again).toMatchObject({ status: 202, body: { runId: 'r9' } });
  });

  it('answers 429 when its own in-flight start queue is at queueSize', async () => {
    const pending: Array<(r: StartResult) => void> = [];
    const h = await serve({ config: { queueSize: 1 }, answer: () => new Promise<StartResult>((resolve) => pending.push(resolve)) });
    const first = github(h, 'workflow_run', workflowRun('failure'));
    while (pending.length === 0) await new Promise((r) => setTimeout(r, 5));
    expect(await (await fetch(`${h.server.url}/healthz`)).json()).toEqual({ ok: true, queue: 1 });
    const second = await github(h, 'workflow_run', workflowRun('failure'));
    expect(second.status).toBe(429);
    expect(second.headers.get('retry-after')).toBe('30');
    pending[0]?.({ started: true, runId: 'slow' });
    expect(await first).toMatchObject({ status: 202, body: { runId: 'slow' } });
  });

  it('answers 500 and logs when the starter throws', async () => {
    const h = await serve({ answer: () => Promise.reject(new Error('registry locked')) });
    const res = await github(h, 'workflow_run', workflowRun('failure'));
    expect(res.status).toBe(500);
    expect(h.events).toContainEqual(expect.objectContaining({ event: 'webhook-error', error: 'registry locked' }));
  });

  it('starts an allowed task from POST /trigger', async () => {
    const h = await serve();
    const res = await trigger(h, { task: 'nightly' }, { delivery: 'manual-1' });
    expect(res).toEqual({ status: 202, body: { runId: 'run-1', task: 'nightly' } });
    expect(h.requests).toEqual([{ taskFile: 'tasks/nightly.md', trigger: 'webhook:trigger:manual-1' }]);
  });

  it('refuses an unknown task with 404 and a malformed body with 400', async () => {
    const h = await serve();
    expect(await trigger(h, { task: 'rm-rf' })).toMatchObject({ status: 404, body: { error: 'unknown task "rm-rf"' } });
    expect((await trigger(h, { task: '../../etc/passwd' })).status).toBe(400);
    expect((await trigger(h, { name: 'nightly' })).status).toBe(400);
    const form = await trigger(h, undefined, { body: 'task=nightly' });
    expect(form.status).toBe(400);
    expect(String(form.body.error)).toMatch(/not JSON/);
    expect(h.requests).toEqual([]);
  });

  it('requires the X-Loopbox-Signature-256 and X-Loopbox-Delivery headers on /trigger', async () => {
    const h = await serve();
    const body = JSON.stringify({ task: 'nightly' });
    const { 'X-Loopbox-Delivery': _d, ...noDeliveryHeaders } = triggerHeaders(body, 'x');
    const { 'X-Loopbox-Signature-256': sig, ...unsignedHeaders } = triggerHeaders(body, 'x');
    const unsigned = await fetch(`${h.server.url}/trigger`, { method: 'POST', headers: unsignedHeaders, body });
    expect(unsigned.status).toBe(401);
    const noDelivery = await fetch(`${h.server.url}/trigger`, { method: 'POST', headers: noDeliveryHeaders, body });
    expect(noDelivery.status).toBe(400);
    // A GitHub signature header does not sign /trigger.
    const wrongHeader = await fetch(`${h.server.url}/trigger`, { method: 'POST', headers: { ...unsignedHeaders, 'X-Hub-Signature-256': sig }, body });
    expect(wrongHeader.status).toBe(401);
  });

  it('answers 400 for a signed body that is not JSON', async () => {
    const h = await serve();
    const res = await github(h, 'workflow_run', undefined, { body: 'payload=%7B%7D' });
    expect(res.status).toBe(400);
    expect(String(res.body.error)).toMatch(/application\/json/);
  });

  it('answers 405 for a wrong method and 404 for an unknown path', async () => {
    const h = await serve();
    const get = await fetch(`${h.server.url}/hooks/github`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect((await fetch(`${h.server.url}/healthz`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${h.server.url}/admin`)).status).toBe(404);
    expect(refusals(h).map((e) => e.status)).toEqual([405, 405, 404]);
  });

  it('answers 404 on /hooks/github when serve.github is not configured', async () => {
    const h = await serve({ config: { github: undefined } });
    expect((await github(h, 'workflow_run', workflowRun('failure'))).status).toBe(404);
  });

  it('refuses to start without a secret, naming the env var', async () => {
    const config = serveSchema.parse({ port: 0, secretEnv: 'MY_HOOK_SECRET' });
    const starter: LoopStarter = { start: () => Promise.resolve({ started: true, runId: 'r' }) };
    for (const secret of [undefined, '', '   ']) {
      await expect(startServer({ config, secret, starter, resolveTask: () => undefined, log: () => undefined })).rejects.toThrow(/MY_HOOK_SECRET/);
    }
    expect(() => secretFromEnv(config, {})).toThrow(ConfigError);
    expect(() => secretFromEnv(config, { MY_HOOK_SECRET: '' })).toThrow(/MY_HOOK_SECRET is empty/);
    expect(secretFromEnv(config, { MY_HOOK_SECRET: SECRET })).toBe(SECRET);
  });

  // Issue 8 item 4: a short secret falls to an offline guess from one captured signature.
  it('refuses a secret under 32 bytes, saying how long it is and how to make one', async () => {
    const config = serveSchema.parse({ port: 0, secretEnv: 'MY_HOOK_SECRET' });
    expect(() => secretFromEnv(config, { MY_HOOK_SECRET: 's3cret' })).toThrow('The webhook secret MY_HOOK_SECRET is 6 bytes long; loopbox serve needs at least 32.');
    const starter: LoopStarter = { start: () => Promise.resolve({ started: true, runId: 'r' }) };
    await expect(startServer({ config, secret: 'x'.repeat(31), starter, resolveTask: () => undefined, log: () => undefined })).rejects.toThrow(/31 bytes long/);
    try {
      secretFromEnv(config, { MY_HOOK_SECRET: 'short' });
    } catch (error) {
      expect((error as ConfigError).hint).toMatch(/openssl rand -hex 32/);
    }
    expect(secretFromEnv(config, { MY_HOOK_SECRET: 'x'.repeat(32) })).toHaveLength(32);
  });

  // Issue 8 item 4: the attacker has one request the server accepted and sends it again.
  it('/trigger: refuses a captured request replayed under a new delivery id', async () => {
    const h = await serve();
    const body = JSON.stringify({ task: 'nightly' });
    const captured = triggerHeaders(body, 'orig-1');
    expect((await trigger(h, undefined, { body, headers: captured })).status).toBe(202);
    const replay = await trigger(h, undefined, { body, headers: { ...captured, 'X-Loopbox-Delivery': 'new-id-2' } });
    expect(replay).toMatchObject({ status: 401, body: { error: 'bad signature' } });
    // Nor with a fresh timestamp and the old signature.
    const later = await trigger(h, undefined, { body, headers: { ...captured, 'X-Loopbox-Delivery': 'new-id-3', 'X-Loopbox-Timestamp': String(Math.floor(Date.now() / 1000) + 1) } });
    expect(later.status).toBe(401);
    expect(h.requests).toHaveLength(1);
  });

  it('/trigger: refuses a correctly signed request outside the signature window, or without a timestamp', async () => {
    const h = await serve({ config: { signatureWindow: '5m' } });
    const body = JSON.stringify({ task: 'nightly' });
    const now = Math.floor(Date.now() / 1000);
    for (const ts of [now - 301, now + 301]) {
      const res = await trigger(h, undefined, { body, headers: triggerHeaders(body, nextDelivery(), String(ts)) });
      expect(res, String(ts)).toMatchObject({ status: 401, body: { error: 'timestamp outside the signature window' } });
    }
    expect((await trigger(h, undefined, { body, headers: triggerHeaders(body, nextDelivery(), String(now - 290)) })).status).toBe(202);
    const { 'X-Loopbox-Timestamp': _t, ...noTimestamp } = triggerHeaders(body);
    expect((await trigger(h, undefined, { body, headers: noTimestamp })).status).toBe(401);
    // The old scheme (the body alone signed) is refused.
    const delivery = nextDelivery();
    const old = { 'X-Loopbox-Timestamp': String(now), 'X-Loopbox-Delivery': delivery, 'X-Loopbox-Signature-256': signBody(SECRET, body) };
    expect(await trigger(h, undefined, { body, headers: old })).toMatchObject({ status: 401, body: { error: 'bad signature' } });
    expect(h.requests).toHaveLength(1);
  });

  it('GitHub: refuses a captured webhook replayed under a new X-GitHub-Delivery (409, signature seen)', async () => {
    const h = await serve();
    const body = JSON.stringify(workflowRun('failure'));
    const signature = signBody(SECRET, body);
    expect((await github(h, 'workflow_run', undefined, { body, signature, delivery: 'gh-1' })).status).toBe(202);
    const replay = await github(h, 'workflow_run', undefined, { body, signature, delivery: 'gh-2-forged' });
    expect(replay).toMatchObject({ status: 409, body: { error: 'replayed delivery id or signature' } });
    expect(h.requests).toHaveLength(1);
  });

  it('documents the exact string a /trigger signature covers', async () => {
    const { readFile } = await import('node:fs/promises');
    const doc = await readFile(new URL('../../docs/triggers.md', import.meta.url), 'utf8');
    expect(doc).toContain('loopbox-v1\\n<timestamp>\\n<delivery id>\\n<body>');
    // The shell recipe in the doc signs the same bytes as signTrigger.
    expect(signTrigger('k'.repeat(32), '1700000000', 'abc', '{"task":"x"}')).toBe(signBody('k'.repeat(32), 'loopbox-v1\n1700000000\nabc\n{"task":"x"}'));
  });

  it('cuts off a client that trickles its headers (slowloris)', async () => {
    const h = await serve({ timeouts: { headersMs: 300, requestMs: 600 } });
    const url = new URL(h.server.url);
    const started = Date.now();
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(url.port), url.hostname, () => socket.write('POST /trigger HTTP/1.1\r\nHost: x\r\n'));
      let text = '';
      const drip = setInterval(() => socket.writable && socket.write('X-Slow: 1\r\n'), 100);
      socket.on('data', (d: Buffer) => (text += d.toString()));
      socket.on('close', () => {
        clearInterval(drip);
        resolve(text);
      });
      socket.on('error', reject);
      setTimeout(() => reject(new Error('still connected after 5 s')), 5_000).unref();
    });
    expect(reply).toMatch(/^HTTP\/1\.1 408/);
    expect(refusals(h)).toContainEqual(expect.objectContaining({ status: 408, reason: 'request timeout (ERR_HTTP_REQUEST_TIMEOUT)' }));
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(h.requests).toEqual([]);
  });

  it('close() is idempotent and refuses new connections', async () => {
    const h = await serve();
    servers.pop();
    await Promise.all([h.server.close(), h.server.close()]);
    await expect(fetch(`${h.server.url}/healthz`)).rejects.toThrow();
  });
});

describe('verifySignature', () => {
  const body = Buffer.from('{"a":1}');
  it('accepts the right signature in either hex case', () => {
    expect(verifySignature(SECRET, body, signBody(SECRET, body))).toBe(true);
    expect(verifySignature(SECRET, body, signBody(SECRET, body).toUpperCase().replace('SHA256=', 'sha256='))).toBe(true);
  });

  it('returns false, never throws, for signatures of the wrong length or shape', () => {
    const good = signBody(SECRET, body);
    for (const header of [undefined, '', 'sha256=', 'sha256=ab', `${good}00`, good.slice(0, -1), `sha256=${'g'.repeat(64)}`, `sha1=${'a'.repeat(40)}`, [good, good], 'sha256=' + 'a'.repeat(1000)]) {
      expect(() => verifySignature(SECRET, body, header)).not.toThrow();
      expect(verifySignature(SECRET, body, header)).toBe(false);
    }
  });
});

describe('ciVerdict', () => {
  it('fails only completed workflow runs with failure/timed_out and check suites with failure', () => {
    expect(ciVerdict('workflow_run', workflowRun('failure')).failed).toBe(true);
    expect(ciVerdict('workflow_run', workflowRun('timed_out')).failed).toBe(true);
    expect(ciVerdict('workflow_run', workflowRun('success')).failed).toBe(false);
    expect(ciVerdict('workflow_run', workflowRun('failure', 'in_progress')).failed).toBe(false);
    expect(ciVerdict('check_suite', { action: 'completed', check_suite: { conclusion: 'failure' } }).failed).toBe(true);
    expect(ciVerdict('check_suite', { action: 'completed', check_suite: { conclusion: 'neutral' } }).failed).toBe(false);
    expect(ciVerdict('workflow_run', null).failed).toBe(false);
    expect(ciVerdict('workflow_run', [1]).failed).toBe(false);
  });
});
