// Task worktrees and host-side commits of what the agent left in them.
//
// The agent writes into the worktree; everything there is untrusted input. So the host never
// lets git look at the worktree: node walks it (lstat, O_NOFOLLOW, see safe-fs.ts), hashes blobs
// itself, hands git raw bytes on stdin (`hash-object --no-filters --stdin`) and builds the commit
// with plumbing on a temporary index (`update-index --index-info`, `write-tree`, `commit-tree`,
// `update-ref`). Checkout into the worktree is node's job too (raw blob bytes from
// `cat-file --batch`), so no smudge/clean filter, eol or ident conversion runs in either
// direction and what the agent sees is byte for byte what gets committed.
//
// The work is cut in four rooms: this file (the worktree's lifecycle: make, reuse, move, index),
// snapshot.ts (walk + blob writer), tree.ts (tree plumbing and repository records) and
// commit.ts (commit and restore). The other rooms' public names are re-exported here.
import { appendFile, mkdir, readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { LoopboxError } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import { git, gitStatus, resolveCommit, splitZ } from './hardened.js';
import { writeTree } from './checkout.js';
import { assertRefName, findAdminDir, findRecord, listWorktrees, repoInfo, requireWorktree, samePath } from './tree.js';

export { DEFAULT_MAX_DEPTH, DEFAULT_MAX_FILES, DEFAULT_MAX_FILE_BYTES, snapshotWorktree } from './snapshot.js';
export type { ChangedPath, SkippedPath, Snapshot, SnapshotOptions } from './snapshot.js';
export { DEFAULT_AUTHOR, commitSnapshot, restorePaths } from './commit.js';
export type { Author, RestoreResult } from './commit.js';
export { listTree } from './tree.js';
export type { EntryMode, TreeEntry, TreeListing } from './tree.js';

/** The directory (relative to the repo) loopbox keeps out of `git status` via info/exclude. */
export const LOOPBOX_DIR = '.loopbox';

export interface TaskWorktree {
  /** Short branch name, `loopbox/<task>`. */
  branch: string;
  /** Absolute, symlink-resolved worktree directory. */
  dir: string;
  /** The branch tip the worktree holds. */
  head: string;
  created: boolean;
  /** Set when the worktree was moved here from `legacyDir`. */
  movedFrom?: string;
}

export interface EnsureWorktreeOptions {
  /**
   * Where an older loopbox kept this task's worktree. If the branch is checked out there, the
   * worktree is moved to the new directory (`git worktree move` keeps git's bookkeeping right).
   */
  legacyDir?: string;
}

// ---------------------------------------------------------------------------------------------
// Worktree setup

/** `loopbox/<task>`: the branch a task's loops commit to (its worktree checks it out). */
export function taskBranch(task: string): string {
  return `loopbox/${task}`;
}

/**
 * Makes (or reuses) the worktree for `task` on branch `loopbox/<task>`, branched from the repo's
 * HEAD the first time. The checkout is written by node from raw blobs (see the file comment).
 */
export async function ensureTaskWorktree(repo: string, task: string, worktreeDir: string, options: EnsureWorktreeOptions = {}): Promise<TaskWorktree> {
  if (!isSafeName(task)) {
    throw new LoopboxError(`Task name ${JSON.stringify(task)} is not a safe name`, {
      hint: 'Use 1-63 characters: lower-case letters, digits, ".", "_" and "-", starting with a letter or digit.',
    });
  }
  const branch = taskBranch(task);
  const ref = `refs/heads/${branch}`;
  const info = await repoInfo(repo);
  await assertRefName(info.top, ref);
  const repoHead = await resolveCommit(info.top, 'HEAD');
  if (!repoHead) {
    throw new LoopboxError(`The repository ${info.top} has no commits yet`, {
      hint: 'loopbox branches each task from the current commit: make a first commit (git commit --allow-empty -m init).',
    });
  }
  await excludeLoopboxDir(info.commonDir);
  const dir = path.resolve(worktreeDir);
  await assertOutsideTrackedTree(info.top, dir, repoHead);

  let tip = await resolveCommit(info.top, ref);
  if (!tip) {
    // Create-only: an empty old value makes update-ref fail if the branch appeared meanwhile.
    await git(['update-ref', '-m', `loopbox: start task ${task}`, ref, repoHead, ''], { cwd: info.top });
    tip = repoHead;
  }

  const existing = await listWorktrees(info.top);
  const here = await findRecord(existing, dir);
  if (here && !here.prunable) {
    if (here.branch !== ref) {
      throw new LoopboxError(`${dir} is already a worktree, on ${here.branch ?? 'a detached HEAD'} instead of ${ref}`, {
        hint: `Remove it (git worktree remove ${dir}) or choose another directory for task ${task}.`,
      });
    }
    return { branch, dir: await realpath(here.path), head: tip, created: false };
  }
  const elsewhere = existing.find((w) => w.branch === ref && !w.prunable);
  if (elsewhere && options.legacyDir && (await samePath(elsewhere.path, options.legacyDir))) {
    await mkdir(path.dirname(dir), { recursive: true });
    await git(['worktree', 'move', elsewhere.path, dir], {
      cwd: info.top,
      hint: `Move it by hand (git worktree move ${elsewhere.path} ${dir}), or remove it (git worktree remove ${elsewhere.path}); its commits are safe on ${branch}.`,
    });
    return { branch, dir: await realpath(dir), head: tip, created: false, movedFrom: elsewhere.path };
  }
  if (elsewhere) {
    throw new LoopboxError(`Branch ${branch} is already checked out in ${elsewhere.path}`, {
      hint: `Use that directory for task ${task}, or remove it with git worktree remove ${elsewhere.path}.`,
    });
  }
  // A worktree whose directory was deleted is still registered; forget it so `add` can reuse the path.
  if (existing.some((w) => w.prunable)) await git(['worktree', 'prune'], { cwd: info.top });

  await mkdir(path.dirname(dir), { recursive: true });
  // --no-checkout: git neither writes files (no smudge filters, no post-checkout hook) nor an index.
  await git(['worktree', 'add', '--no-checkout', '--quiet', dir, branch], {
    cwd: info.top,
    hint: `Is ${dir} a non-empty directory? loopbox needs an empty or missing directory for a new worktree.`,
  });
  try {
    const realDir = await realpath(dir);
    const adminDir = await findAdminDir(info.commonDir, realDir);
    // Written by node from raw blobs (git/checkout.ts), the same writer as the verify base's.
    await writeTree(info.top, realDir, undefined, tip, {
      describe: { what: `The new worktree ${realDir}`, hint: 'It is removed; run again.' },
    });
    await readTreeInto(info.top, path.join(adminDir, 'index'), tip);
    return { branch, dir: realDir, head: tip, created: true };
  } catch (error) {
    // Unwind: a half-written worktree would be reused next time as if it were complete.
    await gitStatus(['worktree', 'remove', '--force', '--force', dir], { cwd: info.top, okExitCodes: [128] }).catch(() => undefined);
    throw error;
  }
}

/** Adds `/.loopbox/` to info/exclude so loopbox's worktrees never show up in the user's status. */
async function excludeLoopboxDir(commonDir: string): Promise<void> {
  const file = path.join(commonDir, 'info', 'exclude');
  let text = '';
  try {
    text = await readFile(file, 'utf8');
  } catch {
    await mkdir(path.dirname(file), { recursive: true });
  }
  const lines = text.split('\n').map((l) => l.trim());
  if (lines.some((l) => [`/${LOOPBOX_DIR}/`, `${LOOPBOX_DIR}/`, `/${LOOPBOX_DIR}`, LOOPBOX_DIR].includes(l))) return;
  const sep = text === '' || text.endsWith('\n') ? '' : '\n';
  await appendFile(file, `${sep}# loopbox task worktrees and state\n/${LOOPBOX_DIR}/\n`);
}

/** A worktree inside a tracked directory would be committed (or clobbered) by the user's own git. */
async function assertOutsideTrackedTree(top: string, dir: string, head: string): Promise<void> {
  const rel = path.relative(top, dir);
  if (rel === '') throw new LoopboxError(`The worktree directory cannot be the repository itself (${top})`);
  if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) return;
  const first = rel.split(path.sep)[0] ?? '';
  const topLevel = splitZ(await git(['ls-tree', '-z', '--name-only', '--full-tree', head], { cwd: top }));
  if (topLevel.includes(first)) {
    throw new LoopboxError(`The worktree directory ${dir} is inside the tracked path ${first}/ of ${top}`, {
      hint: `Put task worktrees under ${path.join(top, LOOPBOX_DIR, 'worktrees')} or outside the repository.`,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Worktree index

/**
 * After the host moved the branch, makes the worktree's index match the new tip so `git status`
 * there is clean. The worktree's HEAD is a symbolic ref to the branch and follows by itself.
 * `read-tree -m -i` on the worktree's own index file touches no file in the worktree and reads
 * none: `-m` keeps the stat data of unchanged entries, `-i` skips the working-tree check.
 * Returns the commit the index now matches.
 */
export async function syncWorktreeIndex(repo: string, dir: string): Promise<string> {
  const info = await repoInfo(repo);
  const wt = await requireWorktree(info, dir);
  if (!wt.head) throw new LoopboxError(`The worktree ${wt.path} has no commit checked out`);
  const adminDir = await findAdminDir(info.commonDir, wt.path);
  await readTreeInto(info.top, path.join(adminDir, 'index'), wt.head);
  return wt.head;
}

async function readTreeInto(top: string, indexFile: string, commit: string): Promise<void> {
  await git(['read-tree', '-m', '-i', commit], { cwd: top, env: { GIT_INDEX_FILE: indexFile } });
}

/**
 * Whether the user's repository has uncommitted changes to tracked files (untracked files are
 * not counted). This is the one porcelain call: it runs in the user's own working tree (trusted),
 * never in a task worktree, still through the hardened runner (no hooks, no fsmonitor).
 */
export async function isDirtyRepo(repo: string): Promise<boolean> {
  const info = await repoInfo(repo);
  const out = await git(['status', '--porcelain=v1', '-z', '--untracked-files=no', '--ignore-submodules=dirty'], { cwd: info.top });
  return out.length > 0;
}
