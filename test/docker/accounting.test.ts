// Test accounting end to end (issue 7 item 5, issue 12 item 3): agents that make the code under
// test exit 0 early, instead of fixing it, never end `done` and never get `Loopbox-Verified:
// yes`; an honest fix still does; a project with no tests, or one that already passes, does not
// end `done` on an iteration that changed nothing.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resourceLabels } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import type { LoopEvent } from '../../src/loop/loop.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { REPORT_PRESETS } from '../../src/verify/presets.js';
import { type LoopRepo, cli, parseJsonLines, testRunId, useTestRun } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;
const git = (cwd: string, ...args: string[]) => execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'commit.gpgsign=false', ...args], { cwd });

const NODE_PROJECT: Record<string, string> = {
  'package.json': '{ "name": "calc", "private": true }\n',
  'calc.js': 'exports.add = (a, b) => a - b;\nexports.mul = (a, b) => a * b;\n',
  'test/calc.test.js': [
    "const test = require('node:test');",
    "const assert = require('node:assert/strict');",
    "const { add, mul } = require('../calc.js');",
    "test('add sums', () => assert.equal(add(2, 3), 5));",
    "test('add handles negatives', () => assert.equal(add(-1, 1), 0));",
    "test('mul multiplies', () => assert.equal(mul(4, 5), 20));",
    '',
  ].join('\n'),
};

const PY_PROJECT: Record<string, string> = {
  'calc.py': 'def add(a, b):\n    return a - b\n',
  'tests/test_calc.py': 'from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n\ndef test_negatives():\n    assert add(-1, 1) == 0\n',
  'pytest.ini': '[pytest]\npythonpath = .\n',
};

async function makeRepo(files: Record<string, string>, config: Record<string, unknown>): Promise<LoopRepo> {
  const repo = await mkdtemp(path.join(tmpdir(), 'lbx-acct-'));
  for (const [name, content] of Object.entries({ ...files, 'tasks/fix.md': '# Task: fix add()\n\n## Goal\nadd(a, b) returns the sum.\n' })) {
    await mkdir(path.dirname(path.join(repo, name)), { recursive: true });
    await writeFile(path.join(repo, name), content);
  }
  await git(repo, 'init', '-q', '-b', 'main');
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-qm', 'project');
  const file = `${repo}.yaml`;
  await writeFile(file, stringify(config));
  return { repo, config: file };
}

function loopConfig(agent: string, verify: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agent: { type: 'command', command: ['bash', '-c', agent], timeout: '60s' },
    verify: { timeout: '60s', ...verify },
    protectedPaths: ['test/**', 'tests/**', 'pytest.ini'],
    loop: { maxIterations: 2, noProgress: 2 },
    sandbox: { memory: '1g', cpus: 1, pids: 256 },
    ...extra,
  };
}

const nodeVerify = { command: REPORT_PRESETS['node-test'].command, report: 'node-test' };

type Summary = { runId: string; endState: string; verifiedCommit: string | null; reason: string; evidence: string };

async function runLoop(c: LoopRepo) {
  const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix.md')], { timeoutMs: 300_000 });
  const events = parseJsonLines<LoopEvent & { record?: IterationRecord; summary?: Summary }>(res.stdout);
  const end = events.find((e) => e.type === 'loop-end')?.summary;
  const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record);
  const baseline = events.find((e) => e.type === 'baseline');
  const log = end ? await branchLog(c.repo) : [];
  const jsonl = end ? await readFile(path.join(stateDir, 'runs', end.runId, 'iterations.jsonl'), 'utf8') : '';
  return { res, end, iterations, baseline, log, jsonl };
}

async function branchLog(repo: string): Promise<string[]> {
  const { stdout } = await execa('git', ['log', '--format=%B%x00', 'loopbox/fix'], { cwd: repo, reject: false });
  return stdout.split('\0').map((s) => s.trim()).filter(Boolean);
}

const verifiedYes = (log: string[]): number => log.filter((m) => m.includes('Loopbox-Verified: yes')).length;

describe('test accounting: early-exit cheats are not verified (real Docker, git)', () => {
  const { track } = useTestRun('acct');

  it('NODE_TEST_CONTEXT early exit in the code under test: exit 0, but the base tests did not run; not done, nothing verified', async () => {
    const cheat = `grep -q NODE_TEST_CONTEXT calc.js || sed -i '1i if (process.env.NODE_TEST_CONTEXT) process.exit(0);' calc.js`;
    const c = track(await makeRepo(NODE_PROJECT, loopConfig(cheat, nodeVerify)));
    const { res, end, iterations, log, jsonl } = await runLoop(c);
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(res.exitCode).not.toBe(0);
    // The cheat works on the exit code: that is exactly what is no longer enough.
    expect(iterations[0]!.verify?.passed, 'the verify command exited 0').toBe(true);
    expect(iterations[0]!.verified).toBe(false);
    expect(iterations[0]!.verify?.accounting?.missing).toEqual(['add sums', 'add handles negatives', 'mul multiplies']);
    expect(verifiedYes(log)).toBe(0);
    expect(log[0]).toContain('Loopbox-Verify: test-report');
    expect(jsonl).toContain('"missing":["add sums"');
    expect(end?.evidence).toBe('1 passed, 0 failed, 3 base test(s) missing or skipped');
  });

  it('process.exit(0) at import of the code under test: not done, nothing verified', async () => {
    const cheat = `grep -q "process.exit(0)" calc.js || sed -i '1i process.exit(0);' calc.js`;
    const c = track(await makeRepo(NODE_PROJECT, loopConfig(cheat, nodeVerify)));
    const { res, end, iterations, log } = await runLoop(c);
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(iterations[0]!.verify?.passed).toBe(true);
    expect(iterations[0]!.verified).toBe(false);
    expect(verifiedYes(log)).toBe(0);
  });

  it('a report planted in the worktree at a relative report path is refused', async () => {
    const forged = 'TAP version 13\\nok 1 - add sums\\nok 2 - add handles negatives\\nok 3 - mul multiplies\\n1..3\\n';
    const cheat = `printf '${forged}' > report.tap; grep -q "process.exit(0)" calc.js || sed -i '1i process.exit(0);' calc.js`;
    const verify = { command: ['node', '--test', '--test-reporter=tap', '--test-reporter-destination=report.tap'], report: { format: 'tap', path: 'report.tap' } };
    const c = track(await makeRepo(NODE_PROJECT, loopConfig(cheat, verify)));
    const { res, end, iterations, log } = await runLoop(c);
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(iterations[0]!.verify?.accounting?.reasons.join('\n')).toMatch(/report\.tap existed before the verify command started/);
    expect(verifiedYes(log)).toBe(0);
  });

  it('a report preset whose command writes no report ends the run in error before the first iteration, saying why', async () => {
    const c = track(await makeRepo(NODE_PROJECT, loopConfig('touch agent-ran', { command: ['node', '--test'], report: 'node-test' })));
    const res = await cli(['--config', c.config, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'fix.md')], { timeoutMs: 300_000 });
    // A ConfigError: exit code 2, as for any bad input refused before the loop starts.
    expect(res.exitCode, res.all).toBe(2);
    expect(res.stderr).toContain('[fix] error: verify.report is set, but verify on the base commit gave no usable report (it exited 1): the verify command wrote no report at /loopbox-report/node-test.tap');
    expect(res.stderr).not.toMatch(/iteration 1/);
    expect(await branchLog(c.repo), 'no commit on the task branch').toEqual(['project']);
  });

  it('an honest fix ends done, with the test counts in the commit trailers', async () => {
    const c = track(await makeRepo(NODE_PROJECT, loopConfig(`sed -i 's/a - b/a + b/' calc.js`, nodeVerify)));
    const { res, end, iterations, baseline, log } = await runLoop(c);
    expect(end?.endState, res.all).toBe('done');
    expect(baseline).toMatchObject({ passes: false, evidence: '1 of 3 test(s) pass', notice: null });
    expect(iterations.map((i) => i.verified)).toEqual([true]);
    expect(verifiedYes(log)).toBe(1);
    expect(log[0]).toContain('Loopbox-Verify: test-report');
    expect(log[0]).toContain('Loopbox-Tests: 3 passed, 0 failed, 0 skipped');
    expect(end?.evidence).toBe('3 passed, 0 failed');
  });

  it('without a report the trailer and the summary say exit-code-only', async () => {
    const c = track(await makeRepo(NODE_PROJECT, loopConfig(`sed -i 's/a - b/a + b/' calc.js`, { command: ['node', '--test'] })));
    const { res, end, log } = await runLoop(c);
    expect(end?.endState, res.all).toBe('done');
    expect(log[0]).toContain('Loopbox-Verify: exit-code-only');
    expect(end?.evidence).toBe('exit code only');
  });
});

describe('test accounting under pytest (real Docker, a verify image with pytest)', () => {
  const { track } = useTestRun('acct-py');
  const image = `loopbox-test/pytest:${testRunId('img')}`;
  beforeAll(async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-pyimg-'));
    await writeFile(
      path.join(dir, 'Dockerfile'),
      `FROM ${imageRef('agent')}\nUSER root\nRUN apt-get update && apt-get install -y --no-install-recommends python3-pytest && rm -rf /var/lib/apt/lists/*\nUSER 1000:1000\n`,
    );
    const labels = Object.entries(resourceLabels({ runId: 'acct-py-image', role: 'test' })).flatMap(([k, v]) => ['--label', `${k}=${v}`]);
    await execa('docker', ['build', '-q', '-t', image, ...labels, dir]);
    await rm(dir, { recursive: true, force: true });
  }, 300_000);
  afterAll(async () => {
    await execa('docker', ['rmi', '-f', image], { reject: false });
  });

  it('os._exit(0) at import under pytest: no report is written; not done, nothing verified', async () => {
    const cheat = `grep -q _exit calc.py || sed -i '1i import os; os._exit(0)' calc.py`;
    const c = track(await makeRepo(PY_PROJECT, loopConfig(cheat, { command: REPORT_PRESETS.pytest.command, report: 'pytest', image })));
    const { res, end, iterations, baseline, log } = await runLoop(c);
    expect(baseline, res.all).toMatchObject({ passes: false, evidence: '0 of 2 test(s) pass' });
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(iterations[0]!.verify?.passed).toBe(true);
    expect(iterations[0]!.verify?.accounting?.reasons.join('\n')).toMatch(/wrote no report/);
    expect(verifiedYes(log)).toBe(0);
  });

  it('an honest fix under pytest ends done', async () => {
    const c = track(await makeRepo(PY_PROJECT, loopConfig(`sed -i 's/a - b/a + b/' calc.py`, { command: REPORT_PRESETS.pytest.command, report: 'pytest', image })));
    const { res, end, log } = await runLoop(c);
    expect(end?.endState, res.all).toBe('done');
    expect(log[0]).toContain('Loopbox-Tests: 2 passed, 0 failed, 0 skipped');
  });
});

describe('vacuous verification (real Docker, git)', () => {
  const { track } = useTestRun('acct-vac');

  it('right after `loopbox init` (no tests yet) an agent that changes nothing does not end done', async () => {
    const repo = await mkdtemp(path.join(tmpdir(), 'lbx-acct-init-'));
    await git(repo, 'init', '-q', '-b', 'main');
    const init = await cli(['init', '--dir', repo], { timeoutMs: 30_000 });
    expect(init.exitCode, init.all).toBe(0);
    const config = parse(await readFile(path.join(repo, 'loopbox.yaml'), 'utf8')) as Record<string, Record<string, unknown>>;
    await writeFile(path.join(repo, 'tasks', 'fix.md'), '# Task: anything\n');
    await git(repo, 'add', '-A');
    await git(repo, 'commit', '-qm', 'loopbox init');
    const file = `${repo}.yaml`;
    await writeFile(file, stringify({ ...config, agent: { type: 'command', command: ['bash', '-c', 'true'], timeout: '60s' }, loop: { maxIterations: 2, noProgress: 2 }, sandbox: { memory: '1g', cpus: 1, pids: 256 } }));
    const c = track({ repo, config: file });
    const { res, end, iterations, baseline, jsonl } = await runLoop(c);
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(baseline).toMatchObject({ passes: false, evidence: '0 of 0 test(s) pass' });
    expect(iterations[0]!.verify?.passed).toBe(true);
    expect(iterations[0]!.verify?.accounting).toMatchObject({ vacuous: true, verified: false });
    expect(jsonl).toContain('"vacuous":true');
    expect(end?.evidence).toMatch(/0 tests ran/);
  });

  it('without a report, the runner\'s own "tests 0" line makes an empty run vacuous', async () => {
    const c = track(await makeRepo({ 'README.md': 'nothing yet\n' }, loopConfig('true', { command: ['node', '--test'] })));
    const { res, end, iterations } = await runLoop(c);
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(iterations[0]!.verify?.accounting).toMatchObject({ mode: 'exit-code-only', vacuous: true, verified: false });
    expect(end?.evidence).toBe('exit code only, no tests ran');
  });

  it('verify already passing on the base commit is said before the first iteration; an unchanged tree does not end done', async () => {
    const passing = { ...NODE_PROJECT, 'calc.js': 'exports.add = (a, b) => a + b;\nexports.mul = (a, b) => a * b;\n' };
    const c = track(await makeRepo(passing, loopConfig('true', nodeVerify)));
    const { res, end, iterations, baseline, jsonl } = await runLoop(c);
    expect(baseline).toMatchObject({ passes: true, notice: 'verify passes on the base commit: it cannot tell when this task is done' });
    expect(['stalled', 'capped'], res.all).toContain(end?.endState);
    expect(iterations[0]!.verify?.passed).toBe(true);
    expect(iterations[0]!.verify?.accounting?.reasons.join('\n')).toMatch(/verify already passes on the base commit/);
    expect(jsonl).toContain('"basePasses":true');
    expect(end?.evidence).toMatch(/base passes/);
    // Human output says it too.
    const human = await cli(['--config', c.config, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'fix.md')], { timeoutMs: 300_000 });
    expect(human.stderr).toContain('warning: verify passes on the base commit: it cannot tell when this task is done');
    expect(human.stderr).toMatch(/EVIDENCE[\s\S]*base passes/);
  });
});
