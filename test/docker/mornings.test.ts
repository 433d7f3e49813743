// Issue 18 end to end: a real loop (command agent, real Docker, sentry, git) with `run --push`
// to a bare repository, a signed notify webhook on 127.0.0.1 that checks the signature with
// `loopbox serve`'s own check, and `loopbox digest` at the end, its HTML loaded in headless
// Chromium. Hooks in the user's repository (its .git/hooks and a checked-in hooks path) must
// not run when loopbox pushes.
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { triggerSigningString, verifySignature } from '../../src/triggers/serve.js';
import { cli, makeLoopRepo, parseJsonLines, remaining, repoRoot, useTestRun } from './helpers.js';

const SECRET = 'm'.repeat(48);

describe('overnight: push, notify and digest after a real loop', () => {
  const { track } = useTestRun('mornings');
  let server: http.Server;
  let url = '';
  const received: Array<{ body: string; signed: boolean; event: string }> = [];
  let scratch = '';

  beforeAll(async () => {
    await execa(path.join(repoRoot, 'scripts', 'ensure-chromium.sh'), { stdio: 'inherit' });
    scratch = await mkdtemp(path.join(tmpdir(), 'lbx-mornings-'));
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const signed = verifySignature(SECRET, triggerSigningString(String(req.headers['x-loopbox-timestamp']), String(req.headers['x-loopbox-delivery']), Buffer.from(body)), req.headers['x-loopbox-signature-256']);
        received.push({ body, signed, event: String(req.headers['x-loopbox-event']) });
        res.statusCode = signed ? 204 : 401;
        res.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/loopbox`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(scratch, { recursive: true, force: true });
  });

  it('pushes the verified commit, sends one signed notification, and the digest (text, json, html in Chromium) shows the run', async () => {
    const agent = 'getent hosts "night-$LOOPBOX_ITERATION.invalid" || true; sed -i "s/return a - b;/return a + b;/" calc.js; exit 0';
    const c = track(await makeLoopRepo({
      agent: { type: 'command', command: ['bash', '-c', agent], timeout: '60s' },
      verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
      protectedPaths: ['test/**'],
      loop: { maxIterations: 3, noProgress: 2 },
      sandbox: { memory: '1g', cpus: 1, pids: 256 },
      notify: { webhook: url, secretEnv: 'MORNINGS_SECRET', timeout: '5s', attempts: 2 },
    }));
    const bare = path.join(scratch, 'remote.git');
    const userGit = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
    await execa('git', ['init', '-q', '--bare', '-b', 'main', bare], { env: userGit });
    await execa('git', ['remote', 'add', 'origin', `file://${bare}`], { cwd: c.repo, env: userGit });
    await execa('git', ['push', '-q', 'origin', 'HEAD:refs/heads/main'], { cwd: c.repo, env: userGit });
    // Hooks a push would normally run: in .git/hooks, and in a hooks path the repo configures.
    const marker = path.join(scratch, 'hook-ran');
    const hook = `#!/bin/sh\necho "$0" >> ${marker}\nexit 0\n`;
    await mkdir(path.join(scratch, 'hooks'));
    for (const dir of [path.join(c.repo, '.git', 'hooks'), path.join(scratch, 'hooks')]) {
      await writeFile(path.join(dir, 'pre-push'), hook);
      await chmod(path.join(dir, 'pre-push'), 0o755);
    }
    await execa('git', ['config', 'core.hooksPath', path.join(scratch, 'hooks')], { cwd: c.repo, env: userGit });

    const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', '--push', 'origin', path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 300_000, env: { MORNINGS_SECRET: SECRET } });
    const events = parseJsonLines<{ type: string; message?: string; summary?: { runId: string; endState: string; verifiedCommit: string | null } }>(res.stdout);
    const end = events.find((e) => e.type === 'loop-end')?.summary;
    expect(res.exitCode, res.all).toBe(0);
    expect(end?.endState).toBe('done');
    const verified = end!.verifiedCommit!;

    // Push: the remote branch's tip is the verified commit; main is untouched; no hook ran.
    const tip = (await execa('git', ['rev-parse', 'refs/heads/loopbox/fix-add'], { cwd: bare, env: userGit })).stdout.trim();
    expect(tip).toBe(verified);
    expect((await execa('git', ['rev-parse', 'refs/heads/main'], { cwd: bare, env: userGit })).stdout.trim()).toBe((await execa('git', ['rev-parse', 'main'], { cwd: c.repo, env: userGit })).stdout.trim());
    expect(existsSync(marker)).toBe(false);
    expect(events.some((e) => e.type === 'notice' && /pushed [0-9a-f]{12} to loopbox\/fix-add on origin/.test(e.message ?? ''))).toBe(true);

    // Notify: exactly one signed loop-end notification with the run's facts.
    expect(received).toHaveLength(1);
    expect(received[0]!.signed).toBe(true);
    const body = JSON.parse(received[0]!.body) as { schema: string; event: string; runs: Array<Record<string, unknown>> };
    expect(body).toMatchObject({ schema: 'loopbox.notify/v1', event: 'loop-end', runs: [{ runId: end!.runId, task: 'fix-add', endState: 'done', verifiedCommit: verified, push: { status: 'pushed', branch: 'loopbox/fix-add', commit: verified }, needsHuman: false }] });
    expect(Number(body.runs[0]!.blocked)).toBeGreaterThan(0);

    // Digest: json has the run with its delivery and audit verdict; text names it; html in Chromium.
    const json = await cli(['digest', '--since', '1h', '--format', 'json']);
    expect(json.exitCode, json.all).toBe(0);
    const digest = JSON.parse(json.stdout) as { runs: Array<{ runId: string; endState: string; verifiedCommit: string; audit: { status: string }; delivery: { push: { status: string } }; topBlocked: Array<{ name: string }> }> };
    const mine = digest.runs.find((r) => r.runId === end!.runId)!;
    expect(mine).toMatchObject({ endState: 'done', verifiedCommit: verified, audit: { status: 'ok' }, delivery: { push: { status: 'pushed' } } });
    expect(mine.topBlocked.some((b) => /night-1\.invalid/.test(b.name))).toBe(true);
    const text = await cli(['digest', '--since', '1h']);
    expect(text.stdout).toMatch(new RegExp(`fix-add {2}DONE {2}\\(run ${end!.runId}`));

    const htmlFile = path.join(scratch, 'digest.html');
    expect((await cli(['digest', '--since', '1h', '--format', 'html', '-o', htmlFile])).exitCode).toBe(0);
    const browser = await chromium.launch({
      executablePath: process.env.LOOPBOX_CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      const requests: string[] = [];
      page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
      page.on('pageerror', (e) => problems.push(e.message));
      page.on('request', (r) => requests.push(r.url()));
      const fileUrl = pathToFileURL(htmlFile).href;
      await page.goto(fileUrl, { waitUntil: 'load' });
      const row = page.locator(`[data-testid=run][data-run="${end!.runId}"]`);
      expect(await row.getAttribute('data-state')).toBe('done');
      expect(await row.locator('[data-testid=audit]').textContent()).toBe('ok');
      expect(await row.textContent()).toContain(verified.slice(0, 12));
      expect(await row.textContent()).toContain('pushed loopbox/fix-add (origin)');
      expect(await page.textContent('[data-testid=totals]')).toMatch(/\d+ run\(s\)/);
      expect(requests).toEqual([fileUrl]);
      expect(problems).toEqual([]);
    } finally {
      await browser.close();
    }
    expect(await remaining(end!.runId)).toEqual([]);
  });

  it('a bad morning: unreachable remote and a webhook that hangs are logged; the loop still ends done with exit 0 and its branch intact', async () => {
    const hanging = http.createServer(() => undefined);
    await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
    try {
      const c = track(await makeLoopRepo({
        agent: { type: 'command', command: ['bash', '-c', 'sed -i "s/return a - b;/return a + b;/" calc.js'], timeout: '60s' },
        verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
        protectedPaths: ['test/**'],
        loop: { maxIterations: 2, push: { remote: 'file:///nonexistent/remote.git' } },
        sandbox: { memory: '1g', cpus: 1, pids: 256 },
        notify: { webhook: `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/`, timeout: '1s', attempts: 2 },
      }));
      const started = Date.now();
      const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 300_000 });
      const events = parseJsonLines<{ type: string; message?: string; summary?: { runId: string; endState: string; verifiedCommit: string | null } }>(res.stdout);
      const end = events.find((e) => e.type === 'loop-end')?.summary;
      expect(res.exitCode, res.all).toBe(0);
      expect(end?.endState).toBe('done');
      const notices = events.filter((e) => e.type === 'notice').map((e) => e.message ?? '');
      expect(notices.some((m) => /^push failed: git ls-remote file:\/\/\/nonexistent\/remote.git failed: the remote cannot be reached/.test(m))).toBe(true);
      expect(notices.some((m) => /^notify webhook failed after 2 attempt\(s\): no answer within 1000 ms/.test(m))).toBe(true);
      // The hanging receiver cost at most the attempts' timeouts and backoff, not the night.
      expect(Date.now() - started).toBeLessThan(240_000);
      const tip = (await execa('git', ['rev-parse', 'loopbox/fix-add'], { cwd: c.repo })).stdout.trim();
      expect(tip).toBe(end!.verifiedCommit);
      const text = await cli(['digest', '--since', '1h']);
      expect(text.stdout).toMatch(new RegExp(`!! fix-add {2}DONE {2}\\(run ${end!.runId}[\\s\\S]*?needs a human: push failed[\\s\\S]*?needs a human: notify webhook failed`));
    } finally {
      hanging.closeAllConnections();
      await new Promise<void>((resolve) => hanging.close(() => resolve()));
    }
  });
});
