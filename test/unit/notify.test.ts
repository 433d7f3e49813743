// `notify:` against real receivers: HTTP servers on 127.0.0.1 made here (one that checks the
// signature with `loopbox serve`'s own check, one that answers 500 and then accepts, one that
// never answers) and real commands run on the host with the JSON on stdin.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { notifySchema, type NotifyConfig } from '../../src/config/deliver.js';
import { NOTIFY_SCHEMA, type NotifyAttemptLog, type NotifyRun, notify, notifyBody } from '../../src/deliver/notify.js';
import { triggerSigningString, verifySignature } from '../../src/triggers/serve.js';

const SECRET = 'x'.repeat(40);
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

interface Seen {
  headers: http.IncomingHttpHeaders;
  body: string;
}

async function server(answer: (n: number, seen: Seen, res: http.ServerResponse) => void): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const s = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const entry = { headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(entry);
      answer(seen.length, entry, res);
    });
  });
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  closers.push(async () => {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  });
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}/hook`, seen };
}

function run(over: Partial<NotifyRun> = {}): NotifyRun {
  return {
    runId: 'r1', task: 'fix', endState: 'done', reason: 'verified', exitCode: 0, trigger: 'manual', iterations: 2, wallMs: 1000, tokens: 10, blocked: 3,
    evidence: '3 of 3 tests pass', branch: 'loopbox/fix', verifiedCommit: 'a'.repeat(40), lastCommit: 'a'.repeat(40), push: null, pullRequest: null, report: null, needsHuman: false, ...over,
  };
}

function cfg(input: Record<string, unknown>): NotifyConfig {
  return notifySchema.parse(input)!;
}

describe('notify webhook', () => {
  it('signs the versioned body with the serve scheme; a receiver using serve\'s own check accepts it, a wrong secret fails it', async () => {
    const { url, seen } = await server((_n, s, res) => {
      const signed = triggerSigningString(String(s.headers['x-loopbox-timestamp']), String(s.headers['x-loopbox-delivery']), Buffer.from(s.body));
      res.statusCode = verifySignature(SECRET, signed, s.headers['x-loopbox-signature-256']) ? 204 : 401;
      res.end();
    });
    const body = notifyBody('loop-end', [run()], '0.1.0');
    const ok = await notify(body, { config: cfg({ webhook: url, secretEnv: 'NOTIFY_SECRET' }), env: { NOTIFY_SECRET: SECRET }, version: '0.1.0', backoffMs: 10 });
    expect(ok).toEqual([{ target: 'webhook', ok: true, attempts: 1 }]);
    const sent = JSON.parse(seen[0]!.body) as Record<string, unknown>;
    expect(sent).toMatchObject({ schema: NOTIFY_SCHEMA, event: 'loop-end', runs: [{ task: 'fix', endState: 'done', verifiedCommit: 'a'.repeat(40) }] });
    expect(seen[0]!.headers['x-loopbox-event']).toBe('loop-end');
    // A receiver with another secret rejects it (401: not retried, a clear error).
    const bad = await notify(body, { config: cfg({ webhook: url, secretEnv: 'NOTIFY_SECRET' }), env: { NOTIFY_SECRET: 'y'.repeat(40) }, version: '0.1.0', backoffMs: 10 });
    expect(bad).toEqual([{ target: 'webhook', ok: false, attempts: 1, error: 'HTTP 401' }]);
  });

  it('a receiver that answers 500 is retried with backoff until it accepts; every attempt is logged', async () => {
    const { url, seen } = await server((n, _s, res) => {
      res.statusCode = n < 3 ? 500 : 200;
      res.end();
    });
    const log: NotifyAttemptLog[] = [];
    const started = Date.now();
    const r = await notify(notifyBody('loop-end', [run()], '0.1.0'), { config: cfg({ webhook: url, attempts: 4 }), version: '0.1.0', backoffMs: 100, log: (e) => log.push(e) });
    expect(r).toEqual([{ target: 'webhook', ok: true, attempts: 3 }]);
    expect(seen).toHaveLength(3);
    // Backoff 100 ms then 200 ms.
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(log.map((l) => [l.attempt, l.status])).toEqual([[1, 500], [2, 500], [3, 200]]);
    // One delivery id across the attempts, so the receiver can drop duplicates.
    expect(new Set(seen.map((s) => s.headers['x-loopbox-delivery'])).size).toBe(1);
  });

  it('a receiver that never answers: each attempt times out, the result says so, nothing throws', async () => {
    const { url, seen } = await server(() => undefined);
    const started = Date.now();
    const r = await notify(notifyBody('loop-end', [run()], '0.1.0'), { config: cfg({ webhook: url, timeout: '300ms', attempts: 2 }), version: '0.1.0', backoffMs: 10 });
    expect(r).toEqual([{ target: 'webhook', ok: false, attempts: 2, error: 'no answer within 300 ms' }]);
    expect(seen).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('attack: a receiver that redirects (307) does not get the signed body sent on to the redirect target', async () => {
    const elsewhere = await server((_n, _s, res) => res.end());
    const { url, seen } = await server((_n, _s, res) => {
      res.writeHead(307, { location: elsewhere.url });
      res.end();
    });
    const r = await notify(notifyBody('loop-end', [run()], '0.1.0'), { config: cfg({ webhook: url, secretEnv: 'LBX_NOTIFY_SECRET', attempts: 2 }), env: { LBX_NOTIFY_SECRET: SECRET }, version: '0.1.0', backoffMs: 10 });
    expect(r).toEqual([{ target: 'webhook', ok: false, attempts: 1, error: 'HTTP 307 (redirects are not followed)' }]);
    expect(seen).toHaveLength(1);
    expect(elsewhere.seen).toHaveLength(0);
  });

  it('a secretEnv that is unset is a config error that says what to do', async () => {
    await expect(notify(notifyBody('loop-end', [], '0.1.0'), { config: cfg({ webhook: 'http://127.0.0.1:1/', secretEnv: 'NOPE_SECRET' }), env: {}, version: '0.1.0' })).rejects.toThrow(ConfigError);
  });
});

describe('notify command', () => {
  it('runs on the host with the JSON on stdin; a failing command is retried and its exit code logged', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-notify-'));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    const out = path.join(dir, 'body.json');
    const good = await notify(notifyBody('schedule-night', [run(), run({ runId: 'r2', endState: 'error', needsHuman: true })], '0.1.0'), { config: cfg({ command: ['sh', '-c', `cat > ${out}; test "$LOOPBOX_NOTIFY_EVENT" = schedule-night`] }), version: '0.1.0', backoffMs: 10 });
    expect(good).toEqual([{ target: 'command', ok: true, attempts: 1 }]);
    expect(JSON.parse(await readFile(out, 'utf8'))).toMatchObject({ schema: NOTIFY_SCHEMA, event: 'schedule-night', runs: [{ runId: 'r1' }, { runId: 'r2', needsHuman: true }] });
    const log: NotifyAttemptLog[] = [];
    const bad = await notify(notifyBody('loop-end', [run()], '0.1.0'), { config: cfg({ command: ['sh', '-c', 'echo nope >&2; exit 3'], attempts: 2 }), version: '0.1.0', backoffMs: 10, log: (e) => log.push(e) });
    expect(bad).toEqual([{ target: 'command', ok: false, attempts: 2, error: 'exit code 3: nope' }]);
    expect(log.map((l) => l.status)).toEqual([3, 3]);
  });

  it('a command that hangs is killed at the timeout', async () => {
    const started = Date.now();
    const r = await notify(notifyBody('loop-end', [run()], '0.1.0'), { config: cfg({ command: ['sleep', '60'], timeout: '300ms', attempts: 1 }), version: '0.1.0' });
    expect(r).toEqual([{ target: 'command', ok: false, attempts: 1, error: 'timed out after 300 ms' }]);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
