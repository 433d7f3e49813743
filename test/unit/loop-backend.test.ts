// The loop against a small in-memory ContainerBackend: no Docker, a real git repository. The
// "agent" edits the worktree it was given as a bind mount; "verify" reads the tree it was given
// from git objects. What is checked is the loop's own work: snapshot, commit, baseline through
// the backend, feedback, the brakes (decide) and the end state. The Docker tests (loop.test.ts)
// run the same loop on real containers.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import type { ContainerBackend, SandboxHandle } from '../../src/backend/backend.js';
import { Semaphore } from '../../src/common/semaphore.js';
import { parseConfig } from '../../src/config/load.js';
import { NO_MODEL_USAGE } from '../../src/egress/gateway-records.js';
import { START_CURSOR } from '../../src/egress/ingest.js';
import type { IterationOutcome } from '../../src/loop/iteration.js';
import { decide, runLoop } from '../../src/loop/loop.js';
import type { LoopState } from '../../src/loop/state.js';
import type { AgentOptions, AgentRun, CollectResult, SentryOptions } from '../../src/sandbox/sandbox.js';
import type { VerifyOptions, VerifyResult } from '../../src/verify/verify.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), `lbx-loop-${prefix}-`));
  dirs.push(dir);
  return dir;
}

const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
async function sh(cwd: string, ...args: string[]): Promise<string> {
  return (await execa('git', args, { cwd, env: userEnv })).stdout;
}

async function gitdir(): Promise<string> {
  const repo = await tempDir('repo');
  await sh(repo, 'init', '-q', '-b', 'main');
  await sh(repo, 'config', 'user.name', 'Test');
  await sh(repo, 'config', 'user.email', 'test@example.com');
  await sh(repo, 'config', 'commit.gpgsign', 'false');
  await mkdir(path.join(repo, 'tasks'));
  await writeFile(path.join(repo, 'tasks', 'fix.md'), '# fix\nMake answer.txt say 42.\n');
  await writeFile(path.join(repo, 'answer.txt'), '41\n');
  await writeFile(path.join(repo, 'test.sh'), 'the test, protected\n');
  await sh(repo, 'add', '-A');
  await sh(repo, 'commit', '-q', '-m', 'init');
  return repo;
}

/** Everything a loop asks of a backend, in memory: what it was asked is kept to be checked. */
class MemoryBackend implements ContainerBackend {
  readonly calls: string[] = [];
  readonly verified: Array<{ iteration: number | undefined; tree: string }> = [];
  constructor(
    private readonly repo: string,
    /** What the agent does to the worktree in iteration n (1-based). */
    private readonly agentStep: (worktree: string, iteration: number) => Promise<void>,
  ) {}

  ping(): Promise<void> {
    return Promise.resolve();
  }

  startSentry(options: SentryOptions): Promise<SandboxHandle> {
    this.calls.push(`startSentry ${options.runId}`);
    const stop = (): Promise<void> => {
      this.calls.push('stopSentry');
      return Promise.resolve();
    };
    return Promise.resolve({ id: 'mem-sentry', modelIp: '10.9.0.2', modelReachable: true, stop });
  }

  async runAgent(_sandbox: SandboxHandle, options: AgentOptions): Promise<AgentRun> {
    const worktree = options.binds?.find((b) => b.container === '/workspace')?.host;
    if (!worktree) throw new Error('no /workspace bind');
    this.calls.push(`runAgent ${options.iteration ?? '?'}`);
    await this.agentStep(worktree, options.iteration ?? 0);
    return { exitCode: 0, timedOut: false, aborted: false, durationMs: 1 };
  }

  collectAudit(): Promise<CollectResult> {
    return Promise.resolve({
      records: [],
      traffic: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0 },
      cursor: START_CURSOR,
      attempts: 0,
      model: { ...NO_MODEL_USAGE, requests: 1, tokens: 10 },
    });
  }

  /** The test passes when answer.txt in the tree (from git objects, not the worktree) says 42. */
  async runVerify(options: VerifyOptions): Promise<VerifyResult> {
    this.verified.push({ iteration: options.iteration, tree: options.tree });
    const answer = await sh(this.repo, 'cat-file', 'blob', `${options.tree}:answer.txt`);
    const passed = answer.trim() === '42';
    return { passed, exitCode: passed ? 0 : 1, timedOut: false, durationMs: 1, copyMs: 0, outputTail: passed ? 'ok' : `expected 42, got ${answer.trim()}`, report: { kind: 'not-configured' } };
  }

  removeRun(runId: string): Promise<void> {
    this.calls.push(`removeRun ${runId}`);
    return Promise.resolve();
  }

  findModel(): Promise<{ containerId: string; ip: string; port: number } | undefined> {
    return Promise.resolve({ containerId: 'mem-model', ip: '10.9.0.2', port: 8080 });
  }

  checkImage(image: string): Promise<void> {
    this.calls.push(`checkImage ${image}`);
    return Promise.resolve();
  }
}

function config(extra: Record<string, unknown> = {}) {
  return parseConfig({ agent: { type: 'command', command: ['true'] }, verify: { command: ['sh', 'test.sh'] }, sandbox: { image: 'mem/agent' }, loop: { maxIterations: 4 }, ...extra });
}

describe('runLoop on an in-memory backend', () => {
  it('runs agent, snapshot, verify and commit through the backend until the test passes', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = new MemoryBackend(repo, async (wt, n) => {
      // First a wrong answer and an attack on the protected test, then the fix.
      if (n === 1) {
        await writeFile(path.join(wt, 'answer.txt'), '40\n');
        await writeFile(path.join(wt, 'test.sh'), 'exit 0\n');
      } else await writeFile(path.join(wt, 'answer.txt'), '42\n');
    });
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ protectedPaths: ['test.sh'] }), stateEnv, backend });

    expect(summary.endState).toBe('done');
    expect(summary.iterations).toBe(2);
    expect(summary.tokens).toBe(20);
    // The baseline (iteration 0) and both iterations were verified through the backend.
    expect(backend.verified.map((v) => v.iteration)).toEqual([0, 1, 2]);
    expect(backend.calls.filter((c) => c.startsWith('startSentry'))).toHaveLength(1);
    expect(backend.calls).toContain('stopSentry');
    expect(backend.calls).toContain('checkImage mem/agent');
    // Committed from the host: the fix is on the branch, the protected test is not touched.
    expect(summary.verifiedCommit).not.toBeNull();
    expect(await sh(repo, 'show', `${summary.verifiedCommit}:answer.txt`)).toBe('42');
    expect(await sh(repo, 'show', `${summary.verifiedCommit}:test.sh`)).toBe('the test, protected');
    const iterations = (await readFile(path.join(summary.runDir, 'iterations.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { verified: boolean; protectedViolations: string[] });
    expect(iterations.map((i) => i.verified)).toEqual([false, true]);
    expect(iterations[0]!.protectedViolations).toEqual(['test.sh']);
  });

  it('stops on no progress when the agent changes nothing', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = new MemoryBackend(repo, () => Promise.resolve());
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ loop: { maxIterations: 10, noProgress: 2 } }), stateEnv, backend });
    expect(summary.endState).toBe('stalled');
    expect(summary.lastCommit).toBeNull();
    expect(backend.verified.length).toBeGreaterThan(1);
  });

  it('takes a local model slot for a local iteration and none for an escalated one', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const slots = new Semaphore(1);
    const seen: Array<{ iteration: number; inUse: number }> = [];
    const backend = new MemoryBackend(repo, async (wt, n) => {
      seen.push({ iteration: n, inUse: slots.inUse });
      await writeFile(path.join(wt, 'answer.txt'), n === 1 ? '40\n' : '42\n');
    });
    const escalated: boolean[] = [];
    const start = backend.startSentry.bind(backend);
    backend.startSentry = (options) => {
      escalated.push(options.escalate !== undefined);
      return start(options);
    };
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ model: { escalate: { endpoint: 'http://escalate.invalid:8080/v1', model: 'big', after: 1 } } }), stateEnv, backend, agentSlots: slots });
    expect(summary.endState).toBe('done');
    // Iteration 1 ran on the local model and held its slot; iteration 2 was escalated and held none.
    expect(escalated).toEqual([false, true]);
    expect(seen).toEqual([{ iteration: 1, inUse: 1 }, { iteration: 2, inUse: 0 }]);
    expect(slots.inUse).toBe(0);
  });

  /** A backend whose engine "goes away" during iteration 1's agent, after the gateway recorded 7 tokens for it. */
  function engineLostOnce(repo: string): MemoryBackend {
    const backend = new MemoryBackend(repo, async (wt, n) => {
      if (n === 1) throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
      await writeFile(path.join(wt, 'answer.txt'), '42\n');
    });
    const collect = backend.collectAudit.bind(backend);
    // Through the interface: the in-memory backend's own collectAudit takes no arguments.
    const seen: ContainerBackend = backend;
    seen.collectAudit = async (...args: Parameters<ContainerBackend['collectAudit']>) => {
      const r = await collect();
      const iteration = args[1].iteration;
      return { ...r, model: { ...r.model, requests: 1, promptTokens: iteration === 1 ? 5 : 8, completionTokens: 2, tokens: iteration === 1 ? 7 : 10 } };
    };
    return backend;
  }

  it("counts a void iteration's tokens (engine loss) from the gateway's records read after the engine came back", async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = engineLostOnce(repo);
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ loop: { maxIterations: 4, engineWait: '5s' } }), stateEnv, backend });
    expect(summary.endState).toBe('done');
    expect(summary.tokens).toBe(17);
    const iterations = (await readFile(path.join(summary.runDir, 'iterations.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { void?: string; tokens: number; model?: { requests: number; promptTokens: number } });
    expect(iterations[0]).toMatchObject({ tokens: 7, model: { requests: 1, promptTokens: 5 } });
    expect(iterations[0]!.void).toMatch(/Docker engine went away/);
    expect(iterations[1]!.tokens).toBe(10);
  });

  it("the token budget sees a void iteration's tokens: the loop ends instead of starting another agent", async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = engineLostOnce(repo);
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ loop: { maxIterations: 4, engineWait: '5s', tokenBudget: 6 } }), stateEnv, backend });
    expect(summary.endState).toBe('timed-out-budget');
    expect(summary.reason).toMatch(/token budget of 6 used \(7, with the void iteration 1's 7\)/);
    expect(backend.calls.filter((c) => c.startsWith('runAgent'))).toEqual(['runAgent 1']);
  });

  it('an engine lost in every iteration does not loop for ever: void iterations in a row end the loop capped', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = new MemoryBackend(repo, () => Promise.reject(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })));
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config({ loop: { maxIterations: 3, engineWait: '5s' } }), stateEnv, backend });
    expect(summary.endState).toBe('capped');
    expect(summary.reason).toMatch(/4 void iterations in a row/);
    expect(backend.calls.filter((c) => c.startsWith('runAgent'))).toHaveLength(4);
  });

  it('refuses to start when the backend finds no model server, before anything runs', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = new MemoryBackend(repo, () => Promise.resolve());
    backend.findModel = () => Promise.resolve(undefined);
    await expect(runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config(), stateEnv, backend })).rejects.toThrow(/No model server is running/);
    expect(backend.calls.filter((c) => c.startsWith('startSentry') || c.startsWith('runAgent'))).toEqual([]);
  });
});

describe('opening a session on an in-memory backend', () => {
  const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

  it('starts the sentry while the baseline verify runs (issue 20 item 3), not one after the other', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    // The sentry's start waits (up to 5 s) for the baseline verify to begin: started one
    // after the other, the baseline could only begin once the sentry was up.
    let baselineBegan: () => void = () => undefined;
    const began = new Promise<'overlapped'>((resolve) => (baselineBegan = () => resolve('overlapped')));
    let seen: string | undefined;
    const backend = new MemoryBackend(repo, async (wt) => writeFile(path.join(wt, 'answer.txt'), '42\n'));
    const startSentry = backend.startSentry.bind(backend);
    const runVerify = backend.runVerify.bind(backend);
    backend.startSentry = async (o) => {
      seen = await Promise.race([began, sleep(5000).then(() => 'one after the other')]);
      return startSentry(o);
    };
    backend.runVerify = (o) => {
      if (o.iteration === 0) baselineBegan();
      return runVerify(o);
    };
    const summary = await runLoop({ repo, taskFile: path.join(repo, 'tasks', 'fix.md'), config: config(), stateEnv, backend });
    expect(summary.endState).toBe('done');
    expect(seen).toBe('overlapped');
  });

  it('a failing start-up stops the sentry that started meanwhile and gives back the task lock', async () => {
    const repo = await gitdir();
    const stateEnv = { LOOPBOX_STATE_DIR: await tempDir('state') };
    const backend = new MemoryBackend(repo, () => Promise.resolve());
    backend.runVerify = () => Promise.reject(new Error('the verify image is gone'));
    const taskFile = path.join(repo, 'tasks', 'fix.md');
    await expect(runLoop({ repo, taskFile, config: config(), stateEnv, backend })).rejects.toThrow(/the verify image is gone/);
    expect(backend.calls.filter((c) => c.startsWith('startSentry'))).toHaveLength(1);
    expect(backend.calls).toContain('stopSentry');
    expect(backend.calls.filter((c) => c.startsWith('runAgent'))).toEqual([]);
    // The lock is free again: a new run on the same task gets past it (and fails the same way).
    await expect(runLoop({ repo, taskFile, config: config(), stateEnv, backend })).rejects.toThrow(/the verify image is gone/);
  });
});

describe('decide', () => {
  const state: LoopState = { runId: 'r', task: 't', taskFile: 'f', repo: '/r', branch: 'loopbox/t', worktree: '/w', baseTree: 'b', trees: ['x'], iteration: 1, tokens: 5, elapsedMs: 1, trigger: 'manual' };
  const outcome = (o: Partial<IterationOutcome>): IterationOutcome => ({ record: {} as IterationOutcome['record'], aborted: false, modelDown: false, verified: false, commit: null, budgetExceeded: false, ...o });
  const live = new AbortController().signal;

  it('ends done only on a verified iteration, never on a void one, and aborts on a stop', () => {
    expect(decide(config(), state, outcome({ verified: true }), live)?.state).toBe('done');
    expect(decide(config(), state, outcome({ verified: true, modelDown: true }), live)).toBeUndefined();
    expect(decide(config(), state, outcome({}), live)).toBeUndefined();
    expect(decide(config(), state, outcome({ verified: true }), AbortSignal.abort(new Error('stop requested')))?.state).toBe('aborted');
  });

  it("takes the gateway's 429 as the token budget's end", () => {
    expect(decide(config({ loop: { tokenBudget: 100 } }), state, outcome({ budgetExceeded: true }), live)?.state).toBe('timed-out-budget');
  });
});
