// The task lock and the worktree location, without Docker.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TaskBusyError } from '../../src/common/errors.js';
import { acquireTaskLock, pruneDeadWorktrees, taskWorktreeDir } from '../../src/loop/workspace.js';
import { ensureTaskWorktree } from '../../src/git/index.js';
import { processStartTime } from '../../src/runs/registry.js';

describe('one task, one loop', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let repo: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'lbx-lock-'));
    env = { LOOPBOX_STATE_DIR: path.join(dir, 'state') };
    repo = path.join(dir, 'repo');
    await execa('git', ['init', '-q', repo]);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a second holder with exit code 2 and names the run that holds it, until released', async () => {
    const first = await acquireTaskLock(repo, 'fix', 'run-1', env);
    const refused = await acquireTaskLock(repo, 'fix', 'run-2', env).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TaskBusyError);
    expect((refused as TaskBusyError).exitCode).toBe(2);
    expect((refused as Error).message).toMatch(/already being driven by run run-1/);
    await first.release();
    const second = await acquireTaskLock(repo, 'fix', 'run-2', env);
    expect(JSON.parse(await readFile(second.file, 'utf8'))).toMatchObject({ runId: 'run-2', pid: process.pid });
    await second.release();
  });

  it('takes over a lock whose process is gone, and one whose pid was recycled', async () => {
    const lock = await acquireTaskLock(repo, 'fix', 'run-1', env);
    // A pid that cannot exist.
    await writeFile(lock.file, JSON.stringify({ pid: 2 ** 22 + 7, pidStart: '1', runId: 'dead', since: 'then' }));
    const taken = await acquireTaskLock(repo, 'fix', 'run-2', env);
    // Our own pid, but another start time: a recycled pid, not the owner.
    await writeFile(taken.file, JSON.stringify({ pid: process.pid, pidStart: `${processStartTime(process.pid)}9`, runId: 'old', since: 'then' }));
    const again = await acquireTaskLock(repo, 'fix', 'run-3', env);
    expect(JSON.parse(await readFile(again.file, 'utf8'))).toMatchObject({ runId: 'run-3' });
    await again.release();
  });

  it('gc: deletes task worktrees whose repository is gone, keeps live ones, and git forgets gone folders', async () => {
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '--allow-empty', '-m', 'init'], { cwd: repo });
    const live = await ensureTaskWorktree(repo, 'live', await taskWorktreeDir(repo, 'live', env));
    const gone = await ensureTaskWorktree(repo, 'gone', await taskWorktreeDir(repo, 'gone', env));
    const other = path.join(dir, 'other');
    await execa('git', ['init', '-q', other]);
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '--allow-empty', '-m', 'init'], { cwd: other });
    const orphan = await ensureTaskWorktree(other, 'fix', await taskWorktreeDir(other, 'fix', env));
    await rm(other, { recursive: true, force: true });
    await rm(gone.dir, { recursive: true, force: true });
    const dry = await pruneDeadWorktrees(env, true);
    expect(dry.removed).toEqual([orphan.dir]);
    expect(existsSync(orphan.dir)).toBe(true);
    const res = await pruneDeadWorktrees(env);
    expect(res.removed).toEqual([orphan.dir]);
    expect(existsSync(orphan.dir)).toBe(false);
    expect(existsSync(live.dir)).toBe(true);
    const list = (await execa('git', ['worktree', 'list', '--porcelain'], { cwd: repo })).stdout;
    expect(list).toContain(live.dir);
    expect(list).not.toContain(gone.dir);
  });

  it('keeps task worktrees in the state dir, one folder per repository', async () => {
    const wt = await taskWorktreeDir(repo, 'fix', env);
    expect(wt.startsWith(path.join(dir, 'state', 'worktrees', 'repo-'))).toBe(true);
    expect(path.basename(wt)).toBe('fix');
    expect(wt.startsWith(repo)).toBe(false);
  });
});
