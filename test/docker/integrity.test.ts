// Loop integrity against a hostile agent (issue: loop integrity). Each test is an attack by a
// `command` agent that writes whatever it likes into its worktree, run through the real CLI
// against real Docker and git: as root (CI), and as a non-root user with Docker access.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABELS, stateDirLabel } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { type LoopRepo, cli, cliPath, docker, makeLoopRepo, parseJsonLines, remaining, useTestRun, waitFor } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;

function config(agent: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agent: { type: 'command', command: ['bash', '-c', agent], timeout: '60s' },
    verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
    protectedPaths: ['test/**', 'tools/**'],
    loop: { maxIterations: 3, noProgress: 2 },
    sandbox: { memory: '1g', cpus: 1, pids: 256 },
    ...extra,
  };
}

interface Events {
  res: { exitCode: number; stdout: string; all: string };
  end: { runId: string; endState: string; verifiedCommit: string | null; reason: string; worktree: string } | undefined;
  iterations: IterationRecord[];
}

function parse(res: { exitCode: number; stdout: string; all: string }): Events {
  const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: Events['end'] }>(res.stdout);
  return { res, end: events.find((e) => e.type === 'loop-end')?.summary, iterations: events.filter((e) => e.type === 'iteration-end').map((e) => e.record!) };
}

async function run(c: LoopRepo, task = 'fix-add'): Promise<Events> {
  return parse(await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', `${task}.md`)], { timeoutMs: 300_000 }));
}

/** git as the test's user, in a repository another user may own. */
async function git(repo: string, args: string[]): Promise<string> {
  return (await execa('git', ['-c', 'safe.directory=*', ...args], { cwd: repo })).stdout;
}


async function agentContainer(task: string, iteration?: number): Promise<{ id: string; runId: string } | undefined> {
  // Only this state dir's: other checkouts on the engine may run a task of the same name.
  const label = [`${LABELS.role}=agent`, `${LABELS.task}=${task}`, `${LABELS.stateDir}=${stateDirLabel()}`];
  if (iteration !== undefined) label.push(`${LABELS.iteration}=${iteration}`);
  const [c] = await docker.listContainers(label);
  return c ? { id: c.id, runId: c.labels[LABELS.runId]! } : undefined;
}

/** Every file under `dir` except `.git`, relative, sorted. */
async function filesUnder(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (!prefix && e.name === '.git') continue;
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await filesUnder(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out.sort();
}

describe('loop integrity (real Docker, git): as root', () => {
  const { track } = useTestRun('integrity');

  it('nothing the agent writes lands in the user\'s checkout: task worktrees live in the state dir', async () => {
    // A test file the user's own `node --test` would find and run on the host.
    const agent = 'mkdir -p test && printf "require(\\"fs\\").writeFileSync(\\"PWNED\\", \\"x\\")\\n" > evil.test.js; echo x > notes.txt';
    const c = track(await makeLoopRepo(config(agent)));
    const { res, end } = await run(c);
    expect([3, 4], res.all).toContain(res.exitCode);
    expect(end!.worktree.startsWith(path.join(stateDir, 'worktrees'))).toBe(true);
    // Every file under the user's checkout is a tracked file of its HEAD: nothing else.
    const tracked = (await git(c.repo, ['ls-files'])).split('\n').filter(Boolean).sort();
    expect(await filesUnder(c.repo)).toEqual(tracked);
    // The agent's file exists only as git objects on the task branch.
    expect(await git(c.repo, ['show', 'loopbox/fix-add:evil.test.js'])).toContain('PWNED');
    await execa('node', ['--test'], { cwd: c.repo, reject: false });
    expect(existsSync(path.join(c.repo, 'PWNED'))).toBe(false);
    // git's bookkeeping knows the worktree where it is.
    expect(await git(c.repo, ['worktree', 'list', '--porcelain'])).toContain(`worktree ${end!.worktree}`);
  });

  it('a worktree an older loopbox made inside the repository is moved out, with its branch', async () => {
    const c = track(await makeLoopRepo(config('echo more >> notes.txt')));
    const legacy = path.join(c.repo, '.loopbox', 'worktrees', 'fix-add');
    await git(c.repo, ['branch', 'loopbox/fix-add']);
    await git(c.repo, ['worktree', 'add', legacy, 'loopbox/fix-add']);
    const { res, end } = await run(c);
    expect([3, 4], res.all).toContain(res.exitCode);
    expect(res.all).toMatch(/moved the task worktree/);
    expect(existsSync(legacy)).toBe(false);
    expect(end!.worktree.startsWith(path.join(stateDir, 'worktrees'))).toBe(true);
    expect(await git(c.repo, ['worktree', 'list', '--porcelain'])).toContain(`worktree ${end!.worktree}`);
  });

  it('a rewritten test behind chmod 555 is never committed, verified or fed back', async () => {
    const c = track(await makeLoopRepo(config(REWRITE_AND_LOCK)));
    await assertProtectedHeld(c, await run(c));
  });

  it('a nested repository with core.fsmonitor does not survive for the user\'s git status', async () => {
    const marker = path.join(await mkdtemp(path.join(tmpdir(), 'lbx-fsmon-')), 'RAN');
    const agent = `mkdir -p sub && cd sub && git init -q && git config core.fsmonitor "touch ${marker}" && echo x > f && cd .. && echo y > other.txt`;
    const c = track(await makeLoopRepo(config(agent)));
    const { res, end, iterations } = await run(c);
    expect([3, 4], res.all).toContain(res.exitCode);
    expect(iterations[0]!.skipped.map((s) => s.path)).toContain('sub/.git');
    expect(existsSync(path.join(end!.worktree, 'sub', '.git'))).toBe(false);
    await execa('git', ['status'], { cwd: path.join(end!.worktree, 'sub'), reject: false });
    await execa('git', ['status'], { cwd: end!.worktree, reject: false });
    expect(existsSync(marker)).toBe(false);
  });

  it('SIGKILL of loopbox mid-iteration: the agent container ends at its own deadline; status reaps the rest', async () => {
    const c = track(await makeLoopRepo(config('sleep infinity', { agent: { type: 'command', command: ['sleep', 'infinity'], timeout: '4s' } })));
    const child = execa('node', [cliPath, '--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { reject: false });
    const agent = await waitFor('the agent container', () => agentContainer('fix-add'), 60_000);
    child.kill('SIGKILL');
    await child;
    const killedAt = Date.now();
    // Deadline: the 4 s timeout plus the container's grace (15 s), counted from its start.
    await waitFor('the agent container to go', async () => ((await docker.listContainers([], { all: true, id: agent.id })).length ? undefined : true), 45_000);
    expect(Date.now() - killedAt).toBeLessThan(45_000);
    // The sentry of the dead run is reaped by the next command that touches the state.
    expect((await remaining(agent.runId)).length).toBeGreaterThan(0);
    const status = await cli(['status']);
    expect(status.exitCode, status.all).toBe(0);
    expect(await remaining(agent.runId)).toEqual([]);
  });

  it('one task, one loop: a second run on the same task (tasks/FIX-ADD.md too) is refused with exit 2', async () => {
    const c = track(await makeLoopRepo(config('sleep 60', { agent: { type: 'command', command: ['sleep', '60'], timeout: '90s' } })));
    await copyFile(path.join(c.repo, 'tasks', 'fix-add.md'), path.join(c.repo, 'tasks', 'FIX-ADD.md'));
    await git(c.repo, ['add', '-A']);
    await git(c.repo, ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'upper-case task']);
    const first = execa('node', [cliPath, '--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { reject: false, all: true });
    const agent = await waitFor('the first loop\'s agent', () => agentContainer('fix-add'), 60_000);
    const second = await cli(['--config', c.config, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'FIX-ADD.md')]);
    expect(second.exitCode, second.all).toBe(2);
    expect(second.stderr).toMatch(new RegExp(`already being driven by run ${agent.runId}`));
    first.kill('SIGINT');
    const done = await first;
    expect(done.exitCode, String(done.all)).toBe(130);
    // Released: the next loop on the task may start (a quick agent this time).
    const quick = `${c.config}.quick.yaml`;
    await writeFile(quick, stringify(config('true', { loop: { maxIterations: 1 } })));
    const third = await cli(['--config', quick, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 200_000 });
    await rm(quick, { force: true });
    expect(third.stderr).not.toMatch(/already being driven/);
  });

  it('an agent that floods its output is capped (head and tail kept, the rest counted); one that fills the disk is stopped', async () => {
    const flood = 'head -c 30000000 /dev/zero | tr "\\0" x; echo; echo TAIL-MARKER';
    const c = track(await makeLoopRepo(config(flood, { agent: { type: 'command', command: ['bash', '-c', flood], timeout: '60s', maxOutput: '1m' }, loop: { maxIterations: 1 } })));
    const { end, iterations } = await run(c);
    const log = path.join(stateDir, 'runs', end!.runId, 'sandboxes', 'i1.agent.log');
    expect((await stat(log)).size).toBeLessThan(1024 * 1024 + 4096);
    expect(iterations[0]!.agent.outputDropped).toBeGreaterThan(28_000_000);
    const text = await readFile(log, 'utf8');
    expect(text).toContain('TAIL-MARKER');
    expect(text).toMatch(/bytes of agent output dropped/);

    const fill = 'dd if=/dev/zero of=big.bin bs=1M count=300 status=none; sleep 50';
    const d = track(await makeLoopRepo(config(fill, { sandbox: { memory: '1g', cpus: 1, pids: 256, disk: '80m' }, loop: { maxIterations: 1 } })));
    const filled = await run(d);
    expect(filled.iterations[0]!.agent.stoppedFor, filled.res.all).toMatch(/sandbox\.disk/);
    expect(filled.iterations[0]!.agent.durationMs).toBeLessThan(45_000);
    expect(filled.end!.endState).not.toBe('error');
  });

  it('an agent image without setpriv (the in-container deadline) is refused before anything runs, saying why', async () => {
    const tag = `lbx-test-nosetpriv:${process.pid}`;
    const context = await mkdtemp(path.join(tmpdir(), 'lbx-img-'));
    await writeFile(path.join(context, 'Dockerfile'), `FROM ${imageRef('agent')}\nUSER 0\nRUN rm /usr/bin/setpriv\n`);
    await execa('docker', ['build', '-q', '-t', tag, context]);
    try {
      const c = track(await makeLoopRepo(config('echo x > f.txt', { sandbox: { memory: '1g', cpus: 1, pids: 256, image: tag } })));
      const res = await cli(['--config', c.config, 'run', '--repo', c.repo, path.join(c.repo, 'tasks', 'fix-add.md')]);
      expect(res.exitCode, res.all).toBe(2);
      expect(res.stderr).toMatch(/cannot run loopbox's in-container deadline/);
      expect(await git(c.repo, ['branch', '--list', 'loopbox/fix-add'])).toBe('');
    } finally {
      await execa('docker', ['rmi', '-f', tag], { reject: false });
      await rm(context, { recursive: true, force: true });
    }
  });

  it('a Docker hiccup (the agent container removed from outside) is recorded for that iteration; the loop goes on', async () => {
    const agent = 'if [ "$LOOPBOX_ITERATION" = 1 ]; then sleep 60; fi; echo "$LOOPBOX_ITERATION" > n.txt';
    const c = track(await makeLoopRepo(config(agent, { loop: { maxIterations: 2, noProgress: 5 } })));
    const running = run(c);
    const victim = await waitFor('iteration 1\'s agent', () => agentContainer('fix-add', 1), 60_000);
    await docker.remove(victim.id);
    const { res, end, iterations } = await running;
    expect(res.exitCode, res.all).toBe(3);
    expect(end!.endState).toBe('capped');
    expect(iterations.map((i) => i.iteration)).toEqual([1, 2]);
    expect(await remaining(end!.runId)).toEqual([]);
  });
});

// The agent rewrites the test to pass trivially, then locks the host out of test/.
const REWRITE_AND_LOCK = 'printf "process.exit(0)\\n" > test/calc.test.js; chmod 555 test; chmod 000 tools';

async function assertProtectedHeld(c: LoopRepo, { res, end, iterations }: Events): Promise<void> {
  expect(res.exitCode, res.all).not.toBe(0);
  expect(['stalled', 'capped'], res.all).toContain(end?.endState);
  expect(iterations[0]!.protectedViolations, res.all).toContain('test/calc.test.js');
  expect(iterations.every((i) => !i.verified)).toBe(true);
  const base = await git(c.repo, ['show', 'HEAD:test/calc.test.js']);
  // Every commit on the task branch has the base's test: none was committed neutered.
  for (const commit of (await git(c.repo, ['rev-list', 'HEAD..loopbox/fix-add'])).split('\n').filter(Boolean)) {
    expect(await git(c.repo, ['show', `${commit}:test/calc.test.js`])).toBe(base);
  }
  expect(await git(c.repo, ['log', '--format=%B', 'loopbox/fix-add'])).not.toMatch(/Loopbox-Verified: yes/);
  // ... and the worktree the next iteration starts from has it back.
  expect((await readFile(path.join(end!.worktree, 'test', 'calc.test.js'), 'utf8')).trimEnd()).toBe(base);
}

// The usual setup: a user (not root) in the docker group. CI runs as root, so the test makes
// the user; run as non-root already, the test runs as that user.
describe('loop integrity (real Docker, git): as a non-root user with Docker access', () => {
  const { track } = useTestRun('integrity-user');
  const user = 'lbx-test-user';
  let as: { uid: number; gid: number; home: string } | undefined;
  const loosened: Array<{ dir: string; mode: number }> = [];

  beforeAll(async () => {
    if (process.getuid?.() !== 0) return;
    try {
      execFileSync('id', ['-u', user], { stdio: 'ignore' });
    } catch {
      execFileSync('useradd', ['--create-home', '--groups', 'docker', user]);
    }
    const uid = Number(execFileSync('id', ['-u', user]).toString().trim());
    const gid = Number(execFileSync('id', ['-g', user]).toString().trim());
    const home = (await mkdtemp(path.join(tmpdir(), 'lbx-user-')));
    execFileSync('chown', [`${uid}:${gid}`, home]);
    as = { uid, gid, home };
    // The user must reach the CLI: its ancestors get o+x (not read) while the test runs.
    for (let dir = path.dirname(cliPath); dir !== '/'; dir = path.dirname(dir)) {
      const { mode } = await lstat(dir);
      if ((mode & 0o001) === 0) {
        loosened.push({ dir, mode });
        await chmod(dir, (mode & 0o7777) | 0o001);
      }
    }
  });

  afterAll(async () => {
    for (const { dir, mode } of loosened) await chmod(dir, mode & 0o7777);
    if (as) await rm(as.home, { recursive: true, force: true });
  });

  it('a rewritten test behind chmod 555 is never committed, verified or fed back', async () => {
    const c = track(await makeLoopRepo(config(REWRITE_AND_LOCK)));
    let env: Record<string, string> | undefined;
    let prefix: string[] = [];
    if (as) {
      execFileSync('chown', ['-R', `${as.uid}:${as.gid}`, c.repo, c.config]);
      const userState = path.join(as.home, 'state');
      await mkdir(userState);
      execFileSync('chown', [`${as.uid}:${as.gid}`, userState]);
      env = { HOME: as.home, LOOPBOX_STATE_DIR: userState, PATH: process.env.PATH ?? '/usr/bin:/bin' };
      prefix = ['setpriv', `--reuid=${as.uid}`, `--regid=${as.gid}`, '--init-groups', '--'];
    }
    const [cmd, ...args] = [...prefix, process.execPath, cliPath, '--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')];
    const r = await execa(cmd, args, { reject: false, all: true, timeout: 300_000, env, extendEnv: !as });
    const events = parse({ exitCode: r.exitCode ?? -1, stdout: String(r.stdout), all: String(r.all) });
    await assertProtectedHeld(c, events);
    if (as) {
      // The loop really ran as the user, and so did the agent.
      const st = await stat(events.end!.worktree);
      expect(st.uid).toBe(as.uid);
    }
  });
});
