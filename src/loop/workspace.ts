// Where a task's worktree lives, who owns its files, and who may drive it.
//
// Task worktrees live under the state directory, one folder per repository, never inside the
// user's checkout: a test runner, editor, linter or file watcher started there must not find a
// file the agent wrote (issue: loop integrity, item 1). The host lends the agent's uid only the
// paths it writes itself; one task is driven by one loop at a time (a lock file with the
// owner's pid and start time, so a crashed owner's lock is taken over).
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, lchown, lstat, mkdir, open, readFile, readdir, realpath, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { TaskBusyError } from '../common/errors.js';
import { stateDir } from '../common/paths.js';
import { git } from '../git/index.js';
import { isProcessAlive, processStartTime } from '../common/process.js';

/** `<state>/worktrees/<repo>-<hash>/`: the task worktrees of one repository. */
export async function repoWorktreesDir(repo: string, env?: NodeJS.ProcessEnv): Promise<string> {
  const top = await realpath(repo);
  const key = `${path.basename(top).replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 40)}-${createHash('sha256').update(top).digest('hex').slice(0, 12)}`;
  return path.join(stateDir(env), 'worktrees', key);
}

export async function taskWorktreeDir(repo: string, task: string, env?: NodeJS.ProcessEnv): Promise<string> {
  return path.join(await repoWorktreesDir(repo, env), task);
}

/** Where loopbox before 0.2 put task worktrees: inside the repository. */
export function legacyWorktreeDir(repo: string, task: string): string {
  return path.join(repo, '.loopbox', 'worktrees', task);
}

// ---------------------------------------------------------------------------------------------
// Ownership

/**
 * Gives `uid` every entry under `dir` (not following links; `.git` at the top stays the host's).
 * Run once per loop session when loopbox runs as root: afterwards the host hands over only the
 * paths it writes itself, so an iteration's cost does not grow with the tree.
 */
export async function lendTree(dir: string | Buffer, uid: number, top = true): Promise<void> {
  const st = await lstat(dir);
  if (!top && st.uid !== uid) await lchown(dir, uid, uid);
  // Raw names: a file name that is not UTF-8 must not end the loop.
  for (const entry of await readdir(dir, { withFileTypes: true, encoding: 'buffer' })) {
    const name = entry.name as unknown as Buffer;
    if (top && name.toString('latin1') === '.git') continue;
    const full = Buffer.concat([Buffer.from(dir), Buffer.from('/'), name]);
    if (entry.isDirectory()) await lendTree(full, uid, false);
    else if ((await lstat(full)).uid !== uid) await lchown(full, uid, uid);
  }
}

/**
 * Takes back what the agent may have locked the host out of along `rel`: each existing parent
 * directory becomes owned by the host's uid and `u+rwx`, so that a `chmod 555 test` (or 000)
 * cannot make the restore of `test/calc.test.js` fail. Symlinks are never followed: a parent
 * that is not a real directory is left for the restore to replace.
 */
export async function takeBackPath(worktree: string, rel: string): Promise<void> {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  let current = worktree;
  for (const part of ['', ...rel.split('/').slice(0, -1)]) {
    current = part ? path.join(current, part) : current;
    const st = await lstat(current).catch(() => undefined);
    if (!st?.isDirectory()) return;
    if (st.uid !== uid) await lchown(current, uid, gid);
    if ((st.mode & 0o700) !== 0o700) await chmod(current, (st.mode & 0o7777) | 0o700);
  }
  const leaf = path.join(worktree, rel);
  const st = await lstat(leaf).catch(() => undefined);
  if (st && !st.isSymbolicLink()) {
    if (st.uid !== uid) await lchown(leaf, uid, gid);
    if ((st.mode & 0o600) !== 0o600) await chmod(leaf, (st.mode & 0o7777) | 0o600);
  }
}

/** Hands paths the host wrote (restored files and their parents) back to the agent's uid. */
export async function lendPaths(worktree: string, rels: readonly string[], uid: number): Promise<void> {
  const done = new Set<string>();
  for (const rel of rels) {
    let current = worktree;
    for (const part of rel.split('/')) {
      current = path.join(current, part);
      if (done.has(current)) continue;
      done.add(current);
      const st = await lstat(current).catch(() => undefined);
      if (!st) break;
      if (st.uid !== uid) await lchown(current, uid, uid);
      if (!st.isDirectory()) break;
    }
  }
}

/**
 * Removes a tree the agent may have locked down (mode 000 directories, read-only parents):
 * each directory is made `u+rwx` first, links are never followed.
 */
export async function forceRemoveTree(dir: string): Promise<void> {
  const unlock = async (d: string): Promise<void> => {
    const st = await lstat(d).catch(() => undefined);
    if (!st?.isDirectory()) return;
    if ((st.mode & 0o700) !== 0o700) await chmod(d, 0o700).catch(() => undefined);
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) if (e.isDirectory()) await unlock(path.join(d, e.name));
  };
  await unlock(dir);
  await rm(dir, { recursive: true, force: true });
}

/**
 * `loopbox gc`: task worktrees whose repository is gone (deleted, or the worktree's git
 * registration removed) are deleted from the state dir, and each repository that still exists
 * forgets registrations whose folder is gone (`git worktree prune`). A worktree of a live
 * repository stays: its branch is the user's to review or resume.
 */
export async function pruneDeadWorktrees(env?: NodeJS.ProcessEnv, dryRun = false): Promise<{ removed: string[]; pruned: string[] }> {
  const root = path.join(stateDir(env), 'worktrees');
  const removed: string[] = [];
  const repos = new Set<string>();
  for (const repoKey of await readdir(root).catch(() => [] as string[])) {
    for (const task of await readdir(path.join(root, repoKey)).catch(() => [] as string[])) {
      const dir = path.join(root, repoKey, task);
      // `.git` in a worktree is a file naming its admin folder; the agent sees it masked read-only.
      const pointer = await readFile(path.join(dir, '.git'), 'utf8').catch(() => '');
      const admin = /^gitdir: (.+)$/m.exec(pointer)?.[1]?.trim();
      const alive = admin !== undefined && (await lstat(admin).then((st) => st.isDirectory(), () => false));
      if (alive) {
        repos.add(path.resolve(admin, '..', '..'));
        continue;
      }
      removed.push(dir);
      if (!dryRun) await forceRemoveTree(dir);
    }
  }
  const pruned: string[] = [];
  for (const commonDir of repos) {
    if (!dryRun) await git(['--git-dir', commonDir, 'worktree', 'prune'], { cwd: commonDir }).catch(() => undefined);
    pruned.push(commonDir);
  }
  return { removed, pruned };
}

// ---------------------------------------------------------------------------------------------
// One task, one loop

interface LockOwner {
  pid: number;
  pidStart: string | null;
  runId: string;
  since: string;
}

export interface TaskLock {
  file: string;
  release(): Promise<void>;
}

/**
 * Takes `<state>/locks/<repo>/<task>.lock` for this process. A lock whose owner is gone (its pid
 * no longer exists with the same start time) is taken over; a live owner's is a clear refusal.
 */
export async function acquireTaskLock(repo: string, task: string, runId: string, env?: NodeJS.ProcessEnv): Promise<TaskLock> {
  const dir = path.join(stateDir(env), 'locks', path.basename(await repoWorktreesDir(repo, env)));
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${task}.lock`);
  const me: LockOwner = { pid: process.pid, pidStart: processStartTime(process.pid), runId, since: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      const handle = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      await handle.writeFile(`${JSON.stringify(me)}\n`);
      await handle.close();
      return { file, release: () => releaseLock(file, me) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = await readOwner(file);
    if (owner && ownerAlive(owner)) {
      throw new TaskBusyError(`Task ${task} of ${repo} is already being driven by run ${owner.runId} (pid ${owner.pid}, since ${owner.since}).`, {
        hint: `One task, one loop: wait for that run, or stop it with \`loopbox stop ${owner.runId}\`.`,
      });
    }
    // Stale: move it aside atomically, so that of two processes taking it over only one wins.
    await rename(file, `${file}.stale-${process.pid}`).catch(() => undefined);
    await rm(`${file}.stale-${process.pid}`, { force: true });
  }
  throw new TaskBusyError(`Could not take the lock ${file}: another process keeps taking it.`);
}

async function readOwner(file: string): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as LockOwner;
  } catch {
    return undefined; // half-written by a process that died: stale
  }
}

function ownerAlive(owner: LockOwner): boolean {
  return isProcessAlive(owner.pid, owner.pidStart);
}

async function releaseLock(file: string, me: LockOwner): Promise<void> {
  const owner = await readOwner(file);
  if (owner && owner.pid === me.pid && owner.runId === me.runId) await rm(file, { force: true });
}
