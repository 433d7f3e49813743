// review: the loop asks a reviewer model before it may end `done` (issue 11). Real Docker, git,
// CLI and loop; the reviewer is a real HTTP server on loopback speaking the OpenAI chat API with
// scripted verdicts (a cloud endpoint stands behind it in real use), and once the fixture
// llama-server as a real but noisy reviewer. The request is made by the host, never the sandbox.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { findModelServer } from '../../src/model/network.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { type ReviewerServer, diffReader, startReviewer } from '../fixtures/reviewer-server.js';
import { type LoopRepo, cli, docker, makeLoopRepo, parseJsonLines, remaining, testRunId, useTestRun } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;
const KEY = `sk-review-${testRunId('key')}-must-stay-on-the-host`;
const KEY_ENV = 'LBX_TEST_REVIEW_KEY';

// The agent prints its whole environment (into the agent log under the run dir), then acts.
// It lingers a moment so that the docker inspect poll sees its container.
const HONEST = 'env; sed -i "s/return a - b;/return a + b;/" calc.js; sleep 1.5';
// Games the test: calc.js exits 0 on import, so the test file never gets to its asserts.
const GAMING = 'env; cat "$LOOPBOX_FEEDBACK_FILE"; grep -q process.exit calc.js || sed -i "1i process.exit(0);" calc.js';

function makeCase(agent: string, reviewer: string, loop: Record<string, unknown> = {}): Promise<LoopRepo> {
  return makeLoopRepo({
    agent: { type: 'command', command: ['bash', '-c', agent], timeout: '60s' },
    verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
    protectedPaths: ['test/**', 'tools/**'],
    loop: { maxIterations: 2, noProgress: 2, ...loop },
    sandbox: { memory: '1g', cpus: 1, pids: 256 },
    review: { endpoint: reviewer, model: 'big-reviewer', apiKeyEnv: KEY_ENV, price: { inputPerMTok: 3, outputPerMTok: 15 } },
  });
}

interface Summary {
  runId: string;
  endState: string;
  reason: string;
  review?: { requests: number; approved: number; rejected: number; inputTokens: number; outputTokens: number; cost: number | null };
}

/** Every env entry of every loopbox container seen while `work` runs (docker inspect, polled). */
async function watchContainerEnv<T>(work: Promise<T>): Promise<{ result: T; seen: Map<string, { runId: string; role: string; env: string[] }> }> {
  const seen = new Map<string, { runId: string; role: string; env: string[] }>();
  let done = false;
  const poll = (async () => {
    while (!done) {
      const ids = (await execa('docker', ['ps', '-q', '--no-trunc', '--filter', 'label=loopbox.managed=true'], { reject: false })).stdout.split('\n').filter(Boolean);
      for (const id of ids) {
        if (seen.has(id)) continue;
        const r = await execa('docker', ['inspect', '--format', '{{json .}}', id], { reject: false });
        if (r.exitCode !== 0) continue;
        const info = JSON.parse(r.stdout) as { Config: { Env: string[] | null; Labels: Record<string, string> } };
        seen.set(id, { runId: info.Config.Labels['loopbox.run-id'] ?? '', role: info.Config.Labels['loopbox.role'] ?? '', env: info.Config.Env ?? [] });
      }
      await new Promise((res) => setTimeout(res, 200));
    }
  })();
  try {
    return { result: await work, seen };
  } finally {
    done = true;
    await poll;
  }
}

async function runCase(c: LoopRepo) {
  const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 300_000, env: { [KEY_ENV]: KEY } });
  const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: Summary }>(res.stdout);
  const end = events.find((e) => e.type === 'loop-end')?.summary;
  const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
  return { res, end, iterations };
}

async function branchLog(repo: string): Promise<string[]> {
  const { stdout } = await execa('git', ['log', '--format=%B%x00', 'loopbox/fix-add'], { cwd: repo });
  return stdout.split('\0').map((s) => s.trim()).filter(Boolean);
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(path.join(e.parentPath, e.name));
  return out;
}

async function auditReviews(runId: string): Promise<Array<Record<string, unknown>>> {
  const text = await readFile(path.join(stateDir, 'runs', runId, 'audit.jsonl'), 'utf8');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.kind === 'review');
}

describe('review (real Docker, git, loopback reviewer)', () => {
  const { track } = useTestRun('review');
  const servers: ReviewerServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });
  async function reviewer(script: Parameters<typeof startReviewer>[0]): Promise<ReviewerServer> {
    const s = await startReviewer(script);
    servers.push(s);
    return s;
  }

  it('an agent that games the test is verified, rejected by the reviewer, and does not end done; the reasons reach its feedback', async () => {
    const server = await reviewer(diffReader);
    const c = track(await makeCase(GAMING, server.url));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(3);
    expect(end).toMatchObject({ endState: 'capped' });
    // Verified (the exit code says pass) but rejected, each time.
    expect(iterations.map((i) => [i.verified, i.review?.verdict, i.review?.gaming])).toEqual([
      [true, 'reject', true],
      [true, 'reject', true],
    ]);
    const user = server.requests[0]!.body.messages!.find((m) => m.role === 'user')!.content;
    expect(user).toMatch(/^\+process\.exit\(0\);/m);
    const log = await branchLog(c.repo);
    expect(log[0]).toMatch(/Loopbox-Verified: yes[\s\S]*Loopbox-Review: rejected/);
    expect(log.join('\n')).not.toContain('Loopbox-Review: approved');
    // The second iteration's agent read the reviewer's reasons.
    const agentLog = await readFile(path.join(stateDir, 'runs', end!.runId, 'sandboxes', 'i2.agent.log'), 'utf8');
    expect(agentLog).toContain('calls process.exit(0) on import: the tests never run');
    expect(await remaining(end!.runId)).toEqual([]);
  });

  it('an honest fix is approved and ends done with both trailers; the key is in no file, log or container, and every request is audited', async () => {
    const server = await reviewer(diffReader);
    const c = track(await makeCase(HONEST, server.url));
    const { result, seen } = await watchContainerEnv(runCase(c));
    const { res, end, iterations } = result;
    expect(res.exitCode, res.all).toBe(0);
    expect(end).toMatchObject({ endState: 'done', reason: expect.stringContaining('approved by the reviewer (big-reviewer)') as unknown });
    expect(iterations).toHaveLength(1);
    expect(iterations[0]!.review).toMatchObject({ verdict: 'approve', attempts: 1 });
    const log = await branchLog(c.repo);
    expect(log[0]).toMatch(/Loopbox-Verified: yes[\s\S]*Loopbox-Review: approved \(big-reviewer\)/);
    // The key went to the endpoint, in the header.
    expect(server.requests.map((r) => r.authorization)).toEqual([`Bearer ${KEY}`]);
    // Cost = tokens × price, in the iteration record and the summary.
    const rv = iterations[0]!.review!;
    expect(rv.cost).toBeCloseTo((rv.inputTokens * 3 + rv.outputTokens * 15) / 1e6, 12);
    expect(end!.review).toMatchObject({ requests: 1, approved: 1, inputTokens: rv.inputTokens, cost: rv.cost });
    // The audit log has the request as an allowed record with what left.
    const audited = await auditReviews(end!.runId);
    expect(audited).toHaveLength(1);
    expect(audited[0]).toMatchObject({ verdict: 'allowed', iteration: 1, dst: '127.0.0.1', review: { endpoint: server.url, bytesSent: server.requests[0]!.bytes, inputTokens: rv.inputTokens } });
    // The key: not in any container's environment (the poll saw this run's sentry, agent and
    // verify containers), not in the agent's own `env` output, not in any file of the run.
    const ours = [...seen.values()].filter((s) => s.runId === end!.runId);
    expect(ours.map((s) => s.role)).toEqual(expect.arrayContaining(['sentry', 'agent']));
    for (const s of seen.values()) expect(s.env.join('\n'), `${s.role} container env`).not.toContain(KEY);
    const files = await filesUnder(path.join(stateDir, 'runs', end!.runId));
    expect(files.some((f) => f.endsWith('i1.agent.log'))).toBe(true);
    for (const f of files) expect((await readFile(f)).includes(KEY), f).toBe(false);
    expect(await readFile(c.config, 'utf8')).not.toContain(KEY);
    // The run report shows the reviewer's cost.
    const report = await readFile(path.join(stateDir, 'runs', end!.runId, 'report.html'), 'utf8');
    expect(report).toContain(`data-testid="review-cost">${rv.cost!.toFixed(6)}<`);
    expect(res.all).not.toContain(KEY);
    expect(await remaining(end!.runId)).toEqual([]);
  });

  it('a malformed answer is retried once, then counted as a reject (not done)', async () => {
    const server = await reviewer(() => ({ content: 'Looks good to me! Approve.' }));
    const c = track(await makeCase(HONEST, server.url, { maxIterations: 1 }));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(3);
    expect(end).toMatchObject({ endState: 'capped' });
    expect(server.requests).toHaveLength(2);
    expect(iterations[0]!.review).toMatchObject({ verdict: 'reject', attempts: 2 });
    expect(iterations[0]!.review!.malformed).toMatch(/attempt 1: not JSON.*attempt 2: not JSON/);
    expect(await auditReviews(end!.runId)).toHaveLength(2);
    expect((await branchLog(c.repo))[0]).toContain('Loopbox-Review: rejected');
  });

  it('a review key variable that is not set is refused before anything runs (exit 2)', async () => {
    const server = await reviewer(diffReader);
    const c = track(await makeCase(HONEST, server.url));
    const res = await cli(['--config', c.config, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 120_000 });
    expect(res.exitCode, res.all).toBe(2);
    expect(res.stderr).toContain(`review.apiKeyEnv names ${KEY_ENV}`);
    expect(server.requests).toHaveLength(0);
    const branches = (await execa('git', ['branch', '--list', 'loopbox/*'], { cwd: c.repo })).stdout;
    expect(branches).toBe('');
  });

  it('the fixture llama-server as a real but noisy reviewer: no crash, not done', async () => {
    const model = await findModelServer(docker);
    expect(model, 'the docker global setup starts a model server').toBeDefined();
    const c = track(await makeCase(HONEST, `http://${model!.ip}:${model!.port}/v1`, { maxIterations: 1 }));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(3);
    expect(end).toMatchObject({ endState: 'capped' });
    expect(iterations[0]!.verified).toBe(true);
    expect(iterations[0]!.review).toMatchObject({ verdict: 'reject', attempts: 2 });
    expect(iterations[0]!.review!.outputTokens).toBeGreaterThan(0);
  });
});
