// The loop end to end against real Docker, llama-server, git and OpenCode, with adversarial
// `command` agents. Each ends in the right state, and no commit is marked verified unless
// verification passed.
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { LABELS, resourceLabels } from '../../src/docker/labels.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { taskWorktreeDir } from '../../src/loop/workspace.js';
import { type LoopRepo, cli, docker, makeLoopRepo, parseJsonLines, remaining, useTestRun, waitFor } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;
// Other loopbox installs on the same engine run tasks named fix-add too: only this state dir's.
const ownStateDir = `${LABELS.stateDir}=${resourceLabels({ runId: 'x', role: 'test' })[LABELS.stateDir]}`;

type Case = LoopRepo;

function makeCase(agent: string, extra: Record<string, unknown> = {}): Promise<Case> {
  return makeLoopRepo({
    agent: { type: 'command', command: ['bash', '-c', agent], timeout: '60s' },
    verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
    protectedPaths: ['test/**', 'tools/**'],
    loop: { maxIterations: 4, noProgress: 2 },
    sandbox: { memory: '1g', cpus: 1, pids: 256 },
    ...extra,
  });
}

async function runCase(c: Case, task = 'fix-add', args: string[] = []) {
  const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', `${task}.md`), ...args], { timeoutMs: 300_000 });
  const events = parseJsonLines<{ type: string; runId?: string; record?: IterationRecord; summary?: { runId: string; endState: string; verifiedCommit: string | null; reason: string } }>(res.stdout);
  const end = events.find((e) => e.type === 'loop-end')?.summary;
  const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
  return { res, end, iterations };
}

async function branchLog(repo: string, branch = 'loopbox/fix-add'): Promise<string[]> {
  const { stdout } = await execa('git', ['log', '--format=%B%x00', branch], { cwd: repo });
  return stdout.split('\0').map((s) => s.trim()).filter(Boolean);
}

function verifiedCommits(log: string[]): number {
  return log.filter((m) => m.includes('Loopbox-Verified: yes')).length;
}

describe('loopbox run (real Docker, llama-server, git)', () => {
  const { track } = useTestRun('loop');

  it('a scripted agent that calls the model, fails once and reads the feedback ends done with one verified commit', async () => {
    const c = track(await makeCase('node tools/scripted-agent.mjs'));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(0);
    expect(end).toMatchObject({ endState: 'done' });
    expect(iterations.map((i) => i.verified)).toEqual([false, true]);
    expect(iterations[1]!.tokens).toBeGreaterThan(0);
    const log = await branchLog(c.repo);
    expect(verifiedCommits(log)).toBe(1);
    expect(log[0]).toContain('Loopbox-Verified: yes');
    const { stdout } = await execa('git', ['show', 'loopbox/fix-add:calc.js'], { cwd: c.repo });
    expect(stdout).toContain('return a + b;');
    // The agent's notes persisted on the host between iterations.
    expect(await readFile(path.join(stateDir, 'runs', end!.runId, 'notes', 'progress.md'), 'utf8')).toMatch(/iteration 1[\s\S]*iteration 2/);
    expect(await remaining(end!.runId)).toEqual([]);
  });

  it('an agent that claims success without changing anything is stalled, not done', async () => {
    const c = track(await makeCase('echo "All tests pass. DONE!"; exit 0'));
    const { res, end } = await runCase(c);
    expect(res.exitCode, res.all).toBe(4);
    expect(end).toMatchObject({ endState: 'stalled', verifiedCommit: null });
    expect(verifiedCommits(await branchLog(c.repo))).toBe(0);
  });

  it('an agent that deletes or rewrites the tests has them reverted; nothing verified', async () => {
    const c = track(await makeCase('if [ -f test/calc.test.js ] && grep -q add test/calc.test.js; then echo "console.log(1)" > test/calc.test.js; else rm -f test/calc.test.js; fi; rm -rf tools'));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(4);
    expect(end?.endState).toBe('stalled');
    expect(iterations[0]!.protectedViolations).toEqual(expect.arrayContaining(['test/calc.test.js', 'tools/scripted-agent.mjs']));
    expect(iterations[0]!.verify?.passed).toBe(false);
    const { stdout } = await execa('git', ['show', 'loopbox/fix-add:test/calc.test.js'], { cwd: c.repo });
    expect(stdout).toContain("assert.equal(add(2, 3), 5");
    expect(verifiedCommits(await branchLog(c.repo))).toBe(0);
  });

  it('an agent that edits a verify script listed in protectedPaths is reverted; nothing verified', async () => {
    const c = track(
      await makeCase('printf "exit 0\\n" > run-tests.sh', {
        verify: { command: ['bash', 'run-tests.sh'], timeout: '60s' },
        protectedPaths: ['test/**', 'run-tests.sh'],
      }),
    );
    await writeFile(path.join(c.repo, 'run-tests.sh'), 'node test/calc.test.js\n');
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'x'], { cwd: c.repo }).catch(() => undefined);
    await execa('git', ['add', 'run-tests.sh'], { cwd: c.repo });
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'verify script'], { cwd: c.repo });
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(4);
    expect(end?.endState).toBe('stalled');
    expect(iterations[0]!.protectedViolations).toEqual(['run-tests.sh']);
    expect(iterations.every((i) => i.verify?.passed === false)).toBe(true);
    expect(verifiedCommits(await branchLog(c.repo))).toBe(0);
  });

  it('an agent that produces the same diff forever is stopped by the no-progress brake', async () => {
    const c = track(await makeCase('echo "export const attempt = 1;" > attempt.js'));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(4);
    expect(end?.reason).toMatch(/no change/);
    expect(iterations).toHaveLength(3);
    expect(new Set(iterations.map((i) => i.tree)).size).toBe(1);
  });

  it('an agent that alternates two diffs is stopped as oscillating', async () => {
    const c = track(await makeCase('if grep -q "a - b" calc.js; then sed -i "s/a - b/b - a/" calc.js; else sed -i "s/b - a/a - b/" calc.js; fi'));
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(4);
    expect(end?.reason).toMatch(/oscillating/);
    expect(iterations).toHaveLength(2);
  });

  it('an agent that hangs is killed at its timeout, recorded, and the loop still ends by a brake', async () => {
    const c = track(await makeCase('sleep 600', { agent: { type: 'command', command: ['bash', '-c', 'sleep 600'], timeout: '3s' }, loop: { maxIterations: 2, noProgress: 5 } }));
    const started = Date.now();
    const { res, end, iterations } = await runCase(c);
    expect(res.exitCode, res.all).toBe(3);
    expect(end?.endState).toBe('capped');
    expect(iterations.map((i) => i.agent.timedOut)).toEqual([true, true]);
    expect(Date.now() - started).toBeLessThan(120_000);
    expect(await remaining(end!.runId)).toEqual([]);
  });

  it('real OpenCode on the fixture model is stopped by a brake, with its blocked look-ups in the audit log', async () => {
    const c = track(
      await makeCase('unused', {
        agent: { type: 'opencode', timeout: '120s', contextLimit: 65536, outputLimit: 256 },
        loop: { maxIterations: 2, noProgress: 2 },
      }),
    );
    const { res, end, iterations } = await runCase(c, 'opencode-add');
    expect([3, 4], res.all).toContain(res.exitCode);
    expect(['stalled', 'capped']).toContain(end?.endState);
    expect(iterations.length).toBeGreaterThanOrEqual(1);
    // Tokens the server evaluated (a prompt it already cached counts only its new part).
    expect(iterations[0]!.tokens, 'OpenCode sent its prompt to the model').toBeGreaterThan(0);
    const audit = parseJsonLines<AuditRecord>((await cli(['audit', '--run', end!.runId, '--json'])).stdout);
    expect(audit.some((r) => r.kind === 'dns' && r.iteration === 1 && r.task === 'opencode-add')).toBe(true);
    expect(verifiedCommits(await branchLog(c.repo, 'loopbox/opencode-add').catch(() => []))).toBe(0);
  });

  it('Ctrl+C mid-iteration stops the agent, commits the work in progress, exits 130 and leaves nothing running', async () => {
    const c = track(await makeCase('echo "partial" > wip.txt; sleep 600', { agent: { type: 'command', command: ['bash', '-c', 'echo partial > wip.txt; sleep 600'], timeout: '5m' } }));
    const child = execa('node', [path.join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js'), '--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { reject: false, all: true });
    let exited = false;
    void child.then(() => (exited = true));
    // The agent's container, then its work in progress: waits for events, not fixed times; a
    // CLI that ended early fails the wait with its output.
    const runId = await waitFor('the agent container', async () => {
      if (exited) throw new Error(`loopbox ended before its agent started:\n${String((await child).all)}`);
      const agents = await docker.listContainers(['loopbox.role=agent', 'loopbox.task=fix-add', ownStateDir]);
      return agents[0]?.labels['loopbox.run-id'];
    });
    const wip = path.join(await taskWorktreeDir(c.repo, 'fix-add'), 'wip.txt');
    await waitFor('the agent\'s work in progress', () => Promise.resolve(existsSync(wip) ? true : undefined), 20_000);
    child.kill('SIGINT');
    const res = await child;
    expect(res.exitCode, String(res.all)).toBe(130);
    const events = parseJsonLines<{ type: string; summary?: { endState: string } }>(String(res.stdout));
    expect(events.find((e) => e.type === 'loop-end')?.summary?.endState).toBe('aborted');
    const log = await branchLog(c.repo);
    expect(log[0]).toContain('Loopbox-Verified: no');
    const { stdout } = await execa('git', ['show', 'loopbox/fix-add:wip.txt'], { cwd: c.repo });
    expect(stdout).toBe('partial');
    expect(await remaining(runId)).toEqual([]);
  });
});

describe('crash and resume (real Docker, git)', () => {
  const { track } = useTestRun('crash');

  it('a SIGKILLed run loses no committed work; gc removes its containers; --resume continues it', async () => {
    // Iteration 1 is quick; from iteration 2 on the agent hangs until killed by its timeout.
    const agent = 'date +%s%N > "step-$LOOPBOX_ITERATION.txt"; if [ "$LOOPBOX_ITERATION" -ge 2 ]; then sleep 600; fi';
    const c = track(await makeCase(agent, { agent: { type: 'command', command: ['bash', '-c', agent], timeout: '8s' }, loop: { maxIterations: 3, noProgress: 5 } }));
    const { docker } = await import('./helpers.js');
    const child = execa('node', [path.join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js'), '--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { reject: false, all: true });
    let runId: string | undefined;
    for (let i = 0; i < 150 && !runId; i += 1) {
      await new Promise((r) => setTimeout(r, 200));
      const agents = await docker.listContainers(['loopbox.role=agent', 'loopbox.task=fix-add', 'loopbox.iteration=2', ownStateDir]);
      if (agents[0]) runId = agents[0].labels['loopbox.run-id'];
    }
    expect(runId, 'iteration 2 started').toBeDefined();
    child.kill('SIGKILL');
    await child;
    // Iteration 1's commit is on the branch; the dead run's containers are still there.
    const log = await branchLog(c.repo);
    expect(log).toHaveLength(2);
    expect(log[0]).toContain('Loopbox-Iteration: 1');
    expect((await remaining(runId!)).length).toBeGreaterThan(0);
    const gc = await cli(['gc']);
    expect(gc.exitCode, gc.all).toBe(0);
    expect(await remaining(runId!)).toEqual([]);

    const resumed = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', '--resume', runId!], { timeoutMs: 120_000 });
    const events = parseJsonLines<{ type: string; resumedAt?: number; record?: IterationRecord; summary?: { endState: string; runId: string } }>(resumed.stdout);
    expect(events.find((e) => e.type === 'loop-start')?.resumedAt, resumed.all).toBe(1);
    expect(events.filter((e) => e.type === 'iteration-end').map((e) => e.record!.iteration)).toEqual([2, 3]);
    expect(events.find((e) => e.type === 'loop-end')?.summary).toMatchObject({ endState: 'capped', runId });
    expect(resumed.exitCode).toBe(3);
    expect(await remaining(runId!)).toEqual([]);
    // Finished runs are not resumed again.
    const again = await cli(['--config', c.config, 'run', '--repo', c.repo, '--resume', runId!]);
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toMatch(/already ended: capped/);
  });
});
