// deliverRun, the one call after a loop ends: against a real bare repository and a real HTTP
// receiver on 127.0.0.1. The bad night: an unreachable remote and a webhook that never answers
// are logged and recorded, nothing throws, and the run's state and branch stay as they were.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { runDir } from '../../src/common/paths.js';
import { configSchema } from '../../src/config/schema.js';
import { NightBatch, deliverRun, readDelivery, runFacts, sendNotification } from '../../src/deliver/deliver.js';
import type { LoopSummary } from '../../src/loop/loop.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
const sh = async (cwd: string, ...args: string[]): Promise<string> => (await execa('git', args, { cwd, env: userEnv })).stdout.trim();

async function world(): Promise<{ root: string; repo: string; bare: string; env: NodeJS.ProcessEnv; summary: LoopSummary }> {
  const root = await mkdtemp(path.join(tmpdir(), 'lbx-deliver-'));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  const repo = path.join(root, 'repo');
  const bare = path.join(root, 'remote.git');
  await mkdir(repo);
  await sh(repo, 'init', '-q', '-b', 'main');
  await sh(repo, 'config', 'user.name', 'T');
  await sh(repo, 'config', 'user.email', 't@example.com');
  await writeFile(path.join(repo, 'a'), 'a\n');
  await sh(repo, 'add', '-A');
  await sh(repo, 'commit', '-q', '-m', 'init');
  await sh(root, 'init', '-q', '--bare', '-b', 'main', bare);
  await sh(repo, 'remote', 'add', 'origin', `file://${bare}`);
  await sh(repo, 'push', '-q', 'origin', 'main');
  const commit = await sh(repo, 'commit-tree', '-p', 'HEAD', '-m', 'verified', 'HEAD^{tree}');
  await sh(repo, 'branch', 'loopbox/t', commit);
  const env = { LOOPBOX_STATE_DIR: path.join(root, 'state') };
  const dir = runDir('run-d', env);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'state.json'), JSON.stringify({ runId: 'run-d', task: 't', repo, branch: 'loopbox/t', trigger: 'manual', endState: 'done', endReason: 'verified', iteration: 1, trees: [], tokens: 5, elapsedMs: 1 }));
  await writeFile(path.join(dir, 'iterations.jsonl'), '');
  const summary: LoopSummary = { runId: 'run-d', task: 't', endState: 'done', reason: 'verified', exitCode: 0, iterations: 1, wallMs: 1, tokens: 5, blocked: 2, branch: 'loopbox/t', worktree: '', lastCommit: commit, verifiedCommit: commit, runDir: dir, evidence: '1 of 1 tests pass' };
  return { root, repo, bare, env, summary };
}

async function receiver(answer: (res: http.ServerResponse, body: string) => void): Promise<string> {
  const s = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => answer(res, body));
  });
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  });
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}/`;
}

describe('deliverRun', () => {
  it('pushes, notifies with the run\'s facts, and records both in delivery.json', async () => {
    const { repo, bare, env, summary } = await world();
    const bodies: string[] = [];
    const url = await receiver((res, body) => {
      bodies.push(body);
      res.end();
    });
    const config = configSchema.parse({ loop: { push: 'origin' }, notify: { webhook: url } });
    const notices: string[] = [];
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, onNotice: (m) => notices.push(m) });
    expect(record.push).toMatchObject({ status: 'pushed', branch: 'loopbox/t', commit: summary.verifiedCommit, verified: true });
    expect(await sh(bare, 'rev-parse', 'loopbox/t')).toBe(summary.verifiedCommit);
    expect(record.notify?.results).toEqual([{ target: 'webhook', ok: true, attempts: 1 }]);
    const sent = JSON.parse(bodies[0]!) as { runs: Array<Record<string, unknown>> };
    expect(sent.runs[0]).toMatchObject({ runId: 'run-d', endState: 'done', push: { status: 'pushed', branch: 'loopbox/t' }, needsHuman: false, evidence: '1 of 1 tests pass' });
    expect(await readDelivery(summary.runDir)).toEqual(record);
    expect(notices.join('\n')).toMatch(/pushed [0-9a-f]{12} to loopbox\/t on origin/);
  });

  it('bad night: unreachable remote and a hanging webhook are logged and recorded; nothing throws; state and branch untouched', async () => {
    const { repo, env, summary } = await world();
    const url = await receiver(() => undefined);
    await sh(repo, 'remote', 'set-url', 'origin', 'file:///nonexistent/remote.git');
    const config = configSchema.parse({ loop: { push: 'origin' }, notify: { webhook: url, timeout: '200ms', attempts: 2 } });
    const stateBefore = await readFile(path.join(summary.runDir, 'state.json'), 'utf8');
    const branchBefore = await sh(repo, 'rev-parse', 'loopbox/t');
    const notices: string[] = [];
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, onNotice: (m) => notices.push(m), backoffMs: 10 });
    expect(record.push).toMatchObject({ status: 'failed', remote: 'origin' });
    expect(record.push?.error).toMatch(/cannot be reached/);
    expect(record.notify?.results).toEqual([{ target: 'webhook', ok: false, attempts: 2, error: 'no answer within 200 ms' }]);
    expect(notices.join('\n')).toMatch(/push failed[\s\S]*notify webhook failed after 2 attempt/);
    const log = await readFile(path.join(summary.runDir, 'loop.log'), 'utf8');
    expect(log).toMatch(/push failed/);
    expect(log).toMatch(/notify attempt failed/);
    expect(await readFile(path.join(summary.runDir, 'state.json'), 'utf8')).toBe(stateBefore);
    expect(await sh(repo, 'rev-parse', 'loopbox/t')).toBe(branchBefore);
    // The notification said the push failed and that a human is needed.
    expect((await readDelivery(summary.runDir))?.push?.status).toBe('failed');
  });
});

describe('deliverRun and the run\'s stop (Ctrl+C)', () => {
  it('a stop while the webhook hangs cuts the attempt and the retries short; delivery.json says cancelled; the push and the run are kept', async () => {
    const { repo, bare, env, summary } = await world();
    const stop = new AbortController();
    let requests = 0;
    // A receiver on loopback that reads the request and never answers.
    const url = await receiver(() => {
      requests += 1;
      stop.abort(new Error('SIGINT'));
    });
    const config = configSchema.parse({ loop: { push: 'origin' }, notify: { webhook: url, timeout: '20s', attempts: 3 } });
    const stateBefore = await readFile(path.join(summary.runDir, 'state.json'), 'utf8');
    const started = Date.now();
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, signal: stop.signal });
    // Without the signal: 3 attempts of 20 s plus backoff. With it: well under the CLI's 30 s cap.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(requests).toBe(1);
    expect(record.push).toMatchObject({ status: 'pushed' });
    expect(await sh(bare, 'rev-parse', 'loopbox/t')).toBe(summary.verifiedCommit);
    expect(record.notify?.results).toEqual([{ target: 'webhook', ok: false, attempts: 1, cancelled: true, error: expect.stringMatching(/^cancelled: the run was stopped/) as unknown }]);
    expect(record.cancelled).toEqual({ reason: 'the run was stopped (SIGINT)', steps: ['notify'] });
    expect(await readDelivery(summary.runDir)).toEqual(record);
    expect(await readFile(path.join(summary.runDir, 'state.json'), 'utf8')).toBe(stateBefore);
  });

  it('a stop while git push hangs on the remote kills git; the later steps are not started', async () => {
    const { repo, env, summary } = await world();
    // A git:// "server" on loopback that accepts and never says a word: ls-remote would wait for its timeout.
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    await sh(repo, 'remote', 'set-url', 'origin', `git://127.0.0.1:${(silent.address() as AddressInfo).port}/r.git`);
    let requests = 0;
    const url = await receiver((res) => {
      requests += 1;
      res.end();
    });
    const config = configSchema.parse({ loop: { push: { remote: 'origin', timeout: '60s' } }, notify: { webhook: url } });
    const stop = new AbortController();
    const timer = setInterval(() => {
      if (sockets.length) stop.abort(new Error('SIGINT'));
    }, 50);
    const started = Date.now();
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, signal: stop.signal }).finally(() => clearInterval(timer));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(record.push).toMatchObject({ status: 'cancelled', remote: 'origin', reason: 'the run was stopped (SIGINT)' });
    expect(record.push?.error).toMatch(/was cancelled/);
    expect(record.notify?.results).toEqual([{ target: 'webhook', ok: false, attempts: 0, cancelled: true, error: 'cancelled: the run was stopped' }]);
    expect(requests).toBe(0);
    expect(record.cancelled?.steps).toEqual(['push', 'notify']);
    expect((await readDelivery(summary.runDir))?.cancelled?.steps).toEqual(['push', 'notify']);
  });
});

describe('a night of loopbox schedule', () => {
  it('one schedule-night notification when the last scheduled loop has ended, with every run, the ones needing a human first', async () => {
    const { summary } = await world();
    const bodies: Array<{ event: string; runs: Array<{ runId: string; endState: string; needsHuman: boolean }> }> = [];
    const url = await receiver((res, body) => {
      bodies.push(JSON.parse(body) as (typeof bodies)[number]);
      res.end();
    });
    const config = configSchema.parse({ notify: { webhook: url } });
    const night = new NightBatch((runs) => sendNotification('schedule-night', runs, { config, version: '0.1.0' }));
    night.begin();
    night.begin();
    night.begin();
    await night.end(await runFacts(summary, null));
    await night.end(await runFacts({ ...summary, runId: 'run-e', endState: 'error', reason: 'the sentry did not start', verifiedCommit: null }, null));
    expect(bodies).toHaveLength(0);
    await night.end(await runFacts({ ...summary, runId: 'run-s', endState: 'stalled', reason: 'no progress', verifiedCommit: null }, null));
    expect(bodies).toHaveLength(1);
    expect(bodies[0]!.event).toBe('schedule-night');
    expect(bodies[0]!.runs.map((r) => [r.runId, r.endState, r.needsHuman])).toEqual([['run-e', 'error', true], ['run-s', 'stalled', true], ['run-d', 'done', false]]);
    // The next night starts empty.
    night.begin();
    await night.end(await runFacts(summary, null));
    expect(bodies).toHaveLength(2);
    expect(bodies[1]!.runs).toHaveLength(1);
  });
});

describe('config: loop.push, loop.pullRequest, notify', () => {
  it('loop.push takes true, a remote name, or a map; defaults are the safe ones', async () => {
    const { parseConfig } = await import('../../src/config/load.js');
    expect(parseConfig({ loop: { push: true } }).loop.push).toEqual({ remote: 'origin', branch: 'loopbox/{task}', unverified: 'skip', timeout: 120_000 });
    expect(parseConfig({ loop: { push: 'upstream' } }).loop.push?.remote).toBe('upstream');
    expect(parseConfig({ loop: { push: { remote: 'git@github.com:acme/app.git', unverified: 'wip' } } }).loop.push).toMatchObject({ unverified: 'wip' });
    expect(parseConfig({}).loop.push).toBeUndefined();
    expect(parseConfig({ loop: { push: false } }).loop.push).toBeUndefined();
    expect(parseConfig({}).loop.pullRequest).toBe(false);
  });

  it('bad values are refused with the key named: ext:: remotes, option-like names, credentials in the webhook URL, unknown keys', async () => {
    const { parseConfig } = await import('../../src/config/load.js');
    expect(() => parseConfig({ loop: { push: 'ext::sh -c id' } })).toThrow(/loop\.push[\s\S]*ext::/);
    expect(() => parseConfig({ loop: { push: { branch: '--force' } } })).toThrow(/loop\.push\.branch/);
    expect(() => parseConfig({ loop: { push: { unverified: 'always' } } })).toThrow(/loop\.push\.unverified/);
    expect(() => parseConfig({ notify: { webhook: 'https://user:pw@hooks.example.invalid/x' } })).toThrow(/notify\.webhook[\s\S]*without credentials/);
    expect(() => parseConfig({ notify: { webhook: 'ftp://x.invalid/' } })).toThrow(/notify\.webhook/);
    expect(() => parseConfig({ notify: { command: [] } })).toThrow(/notify\.command/);
    expect(() => parseConfig({ notify: { webhok: 'https://x.invalid/' } })).toThrow(/webhok/);
  });
});

describe('deliverRun with a pull request (contract check: GitHub is a local recording server)', () => {
  async function fakeGitHub(status: number): Promise<{ root: string; seen: Array<{ method: string; url: string; body: Record<string, unknown> | null }> }> {
    const seen: Array<{ method: string; url: string; body: Record<string, unknown> | null }> = [];
    const s = http.createServer((req, res) => {
      let text = '';
      req.on('data', (c: Buffer) => (text += c.toString()));
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', body: text ? (JSON.parse(text) as Record<string, unknown>) : null });
        res.writeHead(status === 200 ? (req.method === 'GET' ? 200 : 201) : status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(status !== 200 ? { message: 'Bad credentials' } : req.method === 'GET' ? [] : { number: 3, html_url: 'https://ghe.invalid/acme/app/pull/3' }));
      });
    });
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => s.close(() => resolve())));
    return { root: `http://127.0.0.1:${(s.address() as AddressInfo).port}/api/v3`, seen };
  }

  // The remote is named by a GitHub-looking URL on a `.invalid` host; the repository's own
  // `url.<base>.insteadOf` sends git to the bare repository, so nothing leaves the machine.
  async function githubLike(): Promise<Awaited<ReturnType<typeof world>> & { remoteUrl: string }> {
    const w = await world();
    const remoteUrl = 'https://ghe.invalid/acme/app.git';
    await sh(w.repo, 'config', `url.file://${w.bare}.insteadOf`, remoteUrl);
    process.env.GH_HOST = 'ghe.invalid';
    cleanups.push(() => {
      delete process.env.GH_HOST;
      return Promise.resolve();
    });
    return { ...w, remoteUrl };
  }

  it('pushes, then opens a draft PR whose body carries the run\'s facts; delivery.json has its URL', async () => {
    const { repo, bare, env, summary, remoteUrl } = await githubLike();
    const { root, seen } = await fakeGitHub(200);
    const { httpTransport } = await import('../../src/deliver/pull-request.js');
    const config = configSchema.parse({ loop: { push: { remote: remoteUrl }, pullRequest: true } });
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, github: () => httpTransport(root, 'tok') });
    expect(record.push).toMatchObject({ status: 'pushed', url: remoteUrl, base: 'main' });
    expect(await sh(bare, 'rev-parse', 'loopbox/t')).toBe(summary.verifiedCommit);
    expect(record.pullRequest).toEqual({ status: 'opened', url: 'https://ghe.invalid/acme/app/pull/3', number: 3 });
    const post = seen.find((s) => s.method === 'POST')!;
    expect(post.url).toBe('/api/v3/repos/acme/app/pulls');
    expect(post.body).toMatchObject({ head: 'loopbox/t', base: 'main', draft: true });
    expect(String(post.body?.body)).toContain(summary.verifiedCommit!);
    expect(String(post.body?.body)).toContain('| blocked egress attempts | 2 |');
    expect((await readDelivery(summary.runDir))?.pullRequest?.url).toBe('https://ghe.invalid/acme/app/pull/3');
  });

  it('an expired token: the push stands, the PR failure is recorded with what to do', async () => {
    const { repo, env, summary, remoteUrl } = await githubLike();
    const { root } = await fakeGitHub(401);
    const { httpTransport } = await import('../../src/deliver/pull-request.js');
    const config = configSchema.parse({ loop: { push: { remote: remoteUrl }, pullRequest: true } });
    const notices: string[] = [];
    const record = await deliverRun(summary, { repo, config, version: '0.1.0', stateEnv: env, github: () => httpTransport(root, 'expired'), onNotice: (m) => notices.push(m) });
    expect(record.push?.status).toBe('pushed');
    expect(record.pullRequest?.status).toBe('failed');
    expect(record.pullRequest?.hint).toMatch(/gh auth login/);
    expect(record.pullRequest?.error).toMatch(/HTTP 401: Bad credentials/);
    expect(notices.join('\n')).toMatch(/pull request failed/);
  });
});
