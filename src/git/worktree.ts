// Task worktrees and host-side commits of what the agent left in them.
//
// The agent writes into the worktree; everything there is untrusted input. So the host never
// lets git look at the worktree: node walks it (lstat, O_NOFOLLOW, see safe-fs.ts), hashes blobs
// itself, hands git raw bytes on stdin (`hash-object --no-filters --stdin`) and builds the commit
// with plumbing on a temporary index (`update-index --index-info`, `write-tree`, `commit-tree`,
// `update-ref`). Checkout into the worktree is node's job too (raw blob bytes from
// `cat-file --batch`), so no smudge/clean filter, eol or ident conversion runs in either
// direction and what the agent sees is byte for byte what gets committed.
import { createHash } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readFile, readdir, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { LoopboxError, describe } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import { GitError, git, gitBytes, gitStatus, resolveCommit, splitZ } from './hardened.js';
import { DirHandle, closeSubdir, decodeName, isFsError, openSubdir } from './safe-fs.js';

export const DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024;
export const DEFAULT_MAX_FILES = 100_000;
export const DEFAULT_MAX_DEPTH = 128;
export const DEFAULT_AUTHOR: Author = { name: 'loopbox', email: 'loopbox@localhost' };
/** The directory (relative to the repo) loopbox keeps out of `git status` via info/exclude. */
export const LOOPBOX_DIR = '.loopbox';

export type EntryMode = '100644' | '100755' | '120000' | '160000';

export interface TreeEntry {
  mode: EntryMode;
  oid: string;
}

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

export interface ChangedPath {
  path: string;
  status: 'added' | 'modified' | 'deleted';
  /** The new mode; for a deleted path, the mode it had. */
  mode: EntryMode;
}

export interface SkippedPath {
  path: string;
  reason: string;
}

export interface SnapshotOptions {
  /** Commit to compare with; default: the worktree's branch tip. */
  base?: string;
  /** Files larger than this are skipped (and keep their base version). Default 50 MiB. */
  maxFileBytes?: number;
  /** More files than this and the snapshot is refused. Default 100 000. */
  maxFiles?: number;
  /** Directories deeper than this are skipped. Default 128. */
  maxDepth?: number;
  /**
   * Paths that always take the base tree's entry, whatever the worktree holds (protected
   * paths). Their content is hashed to tell whether it changed but never written to git.
   */
  keepBase?: (path: string) => boolean;
}

export interface Snapshot {
  /** The tree id: the loop's "diff hash"; the same tree twice means no progress. */
  tree: string;
  /** The commit the snapshot was compared with. */
  base: string;
  changed: ChangedPath[];
  skipped: SkippedPath[];
  /** `keepBase` paths the worktree holds differently from the base (the tree has the base's). */
  violations: string[];
}

export interface Author {
  name: string;
  email: string;
  /** Any date git accepts (e.g. ISO 8601); default now. */
  date?: string;
}

export interface RestoreResult {
  /** Paths written back with their base content. */
  restored: string[];
  /** Paths the base does not have, removed. */
  removed: string[];
}

interface RepoInfo {
  /** Realpath of the repository's top-level directory. */
  top: string;
  commonDir: string;
}

interface WorktreeRecord {
  path: string;
  head?: string;
  branch?: string;
  prunable: boolean;
}

// ---------------------------------------------------------------------------------------------
// Worktree setup

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
  const branch = `loopbox/${task}`;
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
    await checkoutTree(info.top, realDir, tip);
    await readTreeInto(info.top, path.join(adminDir, 'index'), tip);
    return { branch, dir: realDir, head: tip, created: true };
  } catch (error) {
    // Unwind: a half-written worktree would be reused next time as if it were complete.
    await gitStatus(['worktree', 'remove', '--force', '--force', dir], { cwd: info.top, okExitCodes: [128] }).catch(() => undefined);
    throw error;
  }
}

/** Writes every entry of `commit` into the empty directory `dir` from raw blobs, no filters. */
async function checkoutTree(top: string, dir: string, commit: string): Promise<void> {
  const entries = await lsTree(top, commit);
  const root = await DirHandle.open(dir);
  try {
    let batch: Array<[string, TreeEntry & { size: number }]> = [];
    let bytes = 0;
    const flush = async (): Promise<void> => {
      const blobs = await readBlobs(top, batch.map(([, e]) => e.oid));
      for (const [p, e] of batch) await writeEntry(root, p, e.mode, blobs.get(e.oid) ?? Buffer.alloc(0));
      batch = [];
      bytes = 0;
    };
    for (const [p, e] of entries) {
      if (e.mode === '160000') {
        // A submodule is an empty directory, as git itself leaves it without --recurse-submodules.
        await closeSubdir(root, (await openSubdir(root, p.split('/'), true))!);
        continue;
      }
      batch.push([p, e]);
      bytes += e.size;
      if (bytes > 64 * 1024 * 1024 || batch.length > 2000) await flush();
    }
    await flush();
  } finally {
    await root.close();
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
// Snapshot: worktree -> tree

/**
 * Reads what the agent left in `dir` and writes it as a git tree, compared with the branch tip.
 * Skipped paths (too large, special files, unsafe names) keep their base version in the tree.
 */
export async function snapshotWorktree(repo: string, dir: string, options: SnapshotOptions = {}): Promise<Snapshot> {
  const info = await repoInfo(repo);
  const wt = await requireWorktree(info, dir);
  const base = options.base === undefined ? wt.head : await resolveCommit(info.top, options.base);
  if (!base) {
    throw new LoopboxError(`Cannot resolve the base commit ${options.base ?? `of ${wt.path}`}`, {
      hint: 'Pass a commit, or the branch of a task worktree made by ensureTaskWorktree.',
    });
  }
  const baseEntries = await lsTree(info.top, base);
  const state: WalkState = {
    top: info.top,
    hash: await objectHasher(info.top),
    maxFileBytes: options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES,
    maxFiles: options.maxFiles ?? DEFAULT_MAX_FILES,
    maxDepth: options.maxDepth ?? DEFAULT_MAX_DEPTH,
    entries: new Map(),
    skipped: [],
    keep: [],
    gitlinks: new Set([...baseEntries].filter(([, e]) => e.mode === '160000').map(([p]) => p)),
    known: new Set([...baseEntries.values()].map((e) => e.oid)),
    keepBase: options.keepBase,
    base: baseEntries,
    violations: new Set(),
    keptSeen: new Set(),
  };
  const root = await DirHandle.open(wt.path);
  try {
    await walk(root, '', 0, state);
  } finally {
    await root.close();
  }

  // Submodules and skipped paths stay as they are in the base.
  const entries = new Map<string, TreeEntry>(state.entries);
  for (const [p, e] of baseEntries) {
    if (state.gitlinks.has(p) || state.keep.some((k) => p === k || p.startsWith(`${k}/`))) {
      entries.set(p, { mode: e.mode, oid: e.oid });
    }
  }
  if (state.keepBase) {
    const kept = new Set<string>();
    for (const [p, e] of baseEntries) {
      if (!state.keepBase(p)) continue;
      if (!state.keptSeen.has(p)) state.violations.add(p); // changed, deleted, or replaced by a directory
      entries.set(p, { mode: e.mode, oid: e.oid });
      // Whatever the agent put where a parent directory of a kept path was (a file, a symlink)
      // gives way: the tree cannot hold both.
      const parts = p.split('/');
      for (let i = 1; i < parts.length; i += 1) {
        const parent = parts.slice(0, i).join('/');
        if (entries.delete(parent)) state.violations.add(parent);
      }
      kept.add(p);
    }
    // ... and so does anything the agent put below a kept file (the file became a directory).
    for (const q of [...entries.keys()]) {
      const parts = q.split('/');
      for (let i = 1; i < parts.length; i += 1) {
        if (kept.has(parts.slice(0, i).join('/'))) {
          entries.delete(q);
          state.violations.add(q);
          break;
        }
      }
    }
  }
  const tree = await writeTree(info.top, entries);
  return { tree, base, changed: compareTrees(baseEntries, entries), skipped: state.skipped, violations: [...state.violations].sort() };
}

interface WalkState {
  top: string;
  hash: (content: Buffer) => string;
  maxFileBytes: number;
  maxFiles: number;
  maxDepth: number;
  entries: Map<string, TreeEntry>;
  skipped: SkippedPath[];
  /** Skipped paths: their base entries (and those below them) are kept. */
  keep: string[];
  gitlinks: Set<string>;
  /** Object ids that exist already (in the base tree, or written by this snapshot). */
  known: Set<string>;
  keepBase: ((path: string) => boolean) | undefined;
  base: Map<string, TreeEntry>;
  violations: Set<string>;
  /** `keepBase` paths found unchanged in the worktree. */
  keptSeen: Set<string>;
}

// One directory of the walk: lstat each entry, never stat; recurse into real directories only.
async function walk(dir: DirHandle, prefix: string, depth: number, state: WalkState): Promise<void> {
  const names = (await dir.names()).sort((a, b) => Buffer.compare(a, b));
  for (const raw of names) {
    const name = decodeName(raw);
    if (name === undefined) {
      skip(state, `${prefix}${JSON.stringify(raw.toString('latin1'))}`, 'file name is not valid UTF-8');
      continue;
    }
    const rel = prefix ? `${prefix}/${name}` : name;
    // The worktree's `.git` pointer file (masked in the container) is git's, not the agent's.
    if (prefix === '' && name === '.git') continue;
    if (isReservedGitName(name)) {
      skip(state, rel, 'git refuses a path component named like .git');
      continue;
    }
    const stats = await dir.lstat(name);
    if (!stats) continue; // gone since readdir
    if (state.gitlinks.has(rel)) {
      if (!stats.isDirectory()) skip(state, rel, 'a submodule path replaced by a non-directory; kept as in the base');
      continue;
    }
    if (stats.isSymbolicLink()) {
      // The link itself is the content (its target text); it is never followed.
      if (isGitmodulesName(name)) {
        skip(state, rel, 'git refuses a symlinked .gitmodules');
        continue;
      }
      await addBlob(state, rel, '120000', await dir.readlink(name));
    } else if (stats.isFile()) {
      if (stats.size > state.maxFileBytes) {
        skip(state, rel, `larger than ${state.maxFileBytes} bytes (${stats.size})`);
        continue;
      }
      const read = await dir.readFile(name, state.maxFileBytes);
      if (read === 'too-large') skip(state, rel, `larger than ${state.maxFileBytes} bytes`);
      else if (read === 'unreadable') skip(state, rel, 'not readable by loopbox (permissions)');
      else if (!read) skip(state, rel, 'changed from a regular file while being read');
      else await addBlob(state, rel, read.executable ? '100755' : '100644', read.content);
    } else if (stats.isDirectory()) {
      if (depth + 1 >= state.maxDepth) {
        skip(state, rel, `deeper than ${state.maxDepth} directories`);
        continue;
      }
      const sub = await dir.openDir(name).catch((error: unknown) => {
        if (isFsError(error, 'EACCES', 'EPERM')) return 'unreadable' as const;
        throw error;
      });
      if (sub === 'unreadable') {
        skip(state, rel, 'not readable by loopbox (permissions)');
        continue;
      }
      if (!sub) {
        skip(state, rel, 'changed from a directory while being read');
        continue;
      }
      try {
        await walk(sub, rel, depth + 1, state);
      } finally {
        await sub.close();
      }
    } else {
      skip(state, rel, `not a regular file, directory or symlink (${fileKind(stats.mode)})`);
    }
  }
}

function skip(state: WalkState, rel: string, reason: string): void {
  state.skipped.push({ path: rel, reason });
  state.keep.push(rel);
}

// Hashes in node; only objects git does not have yet are handed to git, as bytes on stdin.
async function addBlob(state: WalkState, rel: string, mode: EntryMode, content: Buffer): Promise<void> {
  if (state.entries.size >= state.maxFiles) {
    throw new LoopboxError(`The worktree holds more than ${state.maxFiles} files; refusing to snapshot it`, {
      hint: 'A partial snapshot would record the unread files as deleted. Raise the file limit or have the agent clean up (build outputs, node_modules).',
    });
  }
  const oid = state.hash(content);
  if (state.keepBase?.(rel)) {
    // Protected: the base entry goes in the tree (after the walk); nothing is written to git.
    const b = state.base.get(rel);
    if (!b || b.oid !== oid || b.mode !== mode) state.violations.add(rel);
    else state.keptSeen.add(rel);
    return;
  }
  if (!state.known.has(oid)) {
    // --no-filters and --stdin: git never opens the path nor applies a filter or eol conversion.
    const written = (await git(['hash-object', '-w', '--no-filters', '--stdin'], { cwd: state.top, input: content })).trim();
    if (written !== oid) {
      throw new LoopboxError(`git stored ${rel} as ${written}, but loopbox computed ${oid}`, {
        hint: 'This is a bug in loopbox or an unsupported repository object format.',
      });
    }
    state.known.add(oid);
  }
  state.entries.set(rel, { mode, oid });
}

/** Builds a tree from entries on a throwaway index, and checks git kept every entry. */
async function writeTree(top: string, entries: Map<string, TreeEntry>): Promise<string> {
  const tmp = await mkdtemp(path.join(tmpdir(), 'loopbox-index-'));
  try {
    const env = { GIT_INDEX_FILE: path.join(tmp, 'index') };
    const input = Buffer.concat([...entries].map(([p, e]) => Buffer.from(`${e.mode} ${e.oid}\t${p}\0`, 'utf8')));
    await git(['update-index', '-z', '--index-info'], { cwd: top, env, input });
    const tree = (await git(['write-tree'], { cwd: top, env })).trim();
    // update-index --index-info only warns ("Ignoring path") for paths it refuses; never let a
    // tree silently differ from what loopbox reports.
    const written = await lsTree(top, tree);
    const lost = [...entries].filter(([p, e]) => written.get(p)?.oid !== e.oid || written.get(p)?.mode !== e.mode);
    if (lost.length || written.size !== entries.size) {
      throw new LoopboxError(`git did not keep ${lost.length || 'some'} path(s) in the snapshot tree: ${lost.slice(0, 5).map(([p]) => p).join(', ')}`);
    }
    return tree;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

function compareTrees(base: Map<string, TreeEntry>, next: Map<string, TreeEntry>): ChangedPath[] {
  const changed: ChangedPath[] = [];
  for (const [p, e] of next) {
    const b = base.get(p);
    if (!b) changed.push({ path: p, status: 'added', mode: e.mode });
    else if (b.oid !== e.oid || b.mode !== e.mode) changed.push({ path: p, status: 'modified', mode: e.mode });
  }
  for (const [p, b] of base) if (!next.has(p)) changed.push({ path: p, status: 'deleted', mode: b.mode });
  return changed.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// Commit

/**
 * Commits `tree` on `branch` with `parent` as its only parent and moves the branch there, only if
 * it still points at `parent` (compare-and-swap). An unchanged tree is allowed: the caller decides.
 */
export async function commitSnapshot(
  repo: string,
  branch: string,
  tree: string,
  parent: string,
  message: string,
  author: Author = DEFAULT_AUTHOR,
): Promise<string> {
  const info = await repoInfo(repo);
  const ref = branch.startsWith('refs/') ? branch : `refs/heads/${branch}`;
  await assertRefName(info.top, ref);
  const parentId = await resolveCommit(info.top, parent);
  if (!parentId) throw new LoopboxError(`The parent ${parent} is not a commit in ${info.top}`);
  const { stdout: kind } = await gitStatus(['cat-file', '-t', tree], { cwd: info.top, okExitCodes: [1, 128] });
  if (kind.trim() !== 'tree') throw new LoopboxError(`${tree} is not a tree in ${info.top}`);
  const env: Record<string, string> = {
    GIT_AUTHOR_NAME: author.name,
    GIT_AUTHOR_EMAIL: author.email,
    GIT_COMMITTER_NAME: author.name,
    GIT_COMMITTER_EMAIL: author.email,
  };
  if (author.date) Object.assign(env, { GIT_AUTHOR_DATE: author.date, GIT_COMMITTER_DATE: author.date });
  // The message goes on stdin (-F -) verbatim; commit-tree applies no cleanup and runs no editor.
  const commit = (
    await git(['commit-tree', '--no-gpg-sign', tree, '-p', parentId, '-F', '-'], {
      cwd: info.top,
      env,
      input: message.endsWith('\n') ? message : `${message}\n`,
    })
  ).trim();
  const subject = message.split('\n')[0] ?? '';
  await git(['update-ref', '-m', `loopbox: ${subject}`, ref, commit, parentId], {
    cwd: info.top,
    hint: `${ref} no longer points at ${parentId.slice(0, 12)}: something else moved the branch; re-read it and snapshot again.`,
  });
  return commit;
}

// ---------------------------------------------------------------------------------------------
// Restore protected paths

/**
 * Puts `paths` back as they are in `headCommit`: writes the base blob (or symlink), or removes the
 * path if the base lacks it. Parent directories the agent replaced (e.g. by a symlink to outside)
 * are unlinked and made again; nothing is ever written through a symlink.
 */
export async function restorePaths(repo: string, dir: string, headCommit: string, paths: readonly string[]): Promise<RestoreResult> {
  const info = await repoInfo(repo);
  const wt = await requireWorktree(info, dir);
  const head = await resolveCommit(info.top, headCommit);
  if (!head) throw new LoopboxError(`Cannot restore from ${headCommit}: not a commit in ${info.top}`);
  const base = await lsTree(info.top, head);
  const result: RestoreResult = { restored: [], removed: [] };
  const root = await DirHandle.open(wt.path);
  try {
    for (const p of [...new Set(paths)].sort()) {
      const parts = checkRelativePath(p);
      const entry = base.get(p);
      if (entry && entry.mode !== '160000') {
        const [blob] = (await readBlobs(info.top, [entry.oid])).values();
        await writeEntry(root, p, entry.mode, blob ?? Buffer.alloc(0));
        result.restored.push(p);
      } else if (entry || [...base.keys()].some((k) => k.startsWith(`${p}/`))) {
        // A directory (or submodule) in the base: make sure a real directory is there again.
        await closeSubdir(root, (await openSubdir(root, parts, true))!);
        result.restored.push(p);
      } else {
        const name = parts.pop()!;
        // Parents are not created: if one is not a real directory, nothing of ours is under it.
        const parent = await openSubdir(root, parts, false);
        if (!parent) continue;
        try {
          if (await parent.remove(name)) result.removed.push(p);
        } finally {
          await closeSubdir(root, parent);
        }
      }
    }
  } finally {
    await root.close();
  }
  return result;
}

/** Replaces whatever is at `rel` by a blob or symlink, creating real parent directories as needed. */
async function writeEntry(root: DirHandle, rel: string, mode: EntryMode, content: Buffer): Promise<void> {
  const parts = rel.split('/');
  const name = parts.pop()!;
  const parent = (await openSubdir(root, parts, true))!;
  try {
    await parent.remove(name);
    if (mode === '120000') await parent.createSymlink(name, content);
    else await parent.createFile(name, content, mode === '100755' ? 0o755 : 0o644);
  } finally {
    await closeSubdir(root, parent);
  }
}

function checkRelativePath(p: string): string[] {
  const parts = p.split('/');
  if (p === '' || parts.some((c) => c === '' || c === '.' || c === '..' || isReservedGitName(c)) || p.includes('\0')) {
    throw new LoopboxError(`Refusing to restore ${JSON.stringify(p)}: not a plain relative path inside the worktree`);
  }
  return parts;
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

// ---------------------------------------------------------------------------------------------
// Repository helpers

async function repoInfo(repo: string): Promise<RepoInfo> {
  const dir = path.resolve(repo);
  const isDir = await stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir) throw new LoopboxError(`The repository directory ${dir} does not exist`);
  let out: string;
  try {
    out = await git(['rev-parse', '--is-bare-repository', '--git-common-dir'], { cwd: dir });
  } catch (error) {
    const detail = error instanceof GitError ? error.failure.stderrTail.split('\n')[0] : describe(error);
    throw new LoopboxError(`${dir} is not a git repository (${detail})`, {
      cause: error,
      hint: 'Run loopbox in the top-level directory of a git repository (git init; git commit), or pass --repo.',
    });
  }
  const [bare, commonDir] = out.trim().split('\n');
  if (bare === 'true') {
    throw new LoopboxError(`${dir} is a bare repository`, { hint: 'loopbox needs a repository with a working tree.' });
  }
  const top = (await git(['rev-parse', '--show-toplevel'], { cwd: dir })).trim();
  const realTop = await realpath(top);
  if (realTop !== (await realpath(dir))) {
    throw new LoopboxError(`${dir} is inside the repository ${realTop}, not its top level`, {
      hint: `Pass the top-level directory: ${realTop}`,
    });
  }
  return { top: realTop, commonDir: path.resolve(dir, commonDir ?? '.git') };
}

async function assertRefName(top: string, ref: string): Promise<void> {
  const { exitCode } = await gitStatus(['check-ref-format', ref], { cwd: top, okExitCodes: [1] });
  if (exitCode !== 0) throw new LoopboxError(`${ref} is not a valid git branch name`);
}

/** `git worktree list --porcelain -z`: records separated by an empty field. */
async function listWorktrees(top: string): Promise<WorktreeRecord[]> {
  const fields = (await git(['worktree', 'list', '--porcelain', '-z'], { cwd: top })).split('\0');
  const records: WorktreeRecord[] = [];
  let current: WorktreeRecord | undefined;
  for (const field of fields) {
    if (field === '') {
      current = undefined;
      continue;
    }
    const [key, ...rest] = field.split(' ');
    const value = rest.join(' ');
    if (key === 'worktree') {
      current = { path: value, prunable: false };
      records.push(current);
    } else if (current && key === 'HEAD') current.head = value;
    else if (current && key === 'branch') current.branch = value;
    else if (current && key === 'prunable') current.prunable = true;
  }
  return records;
}

async function samePath(a: string, b: string): Promise<boolean> {
  const ra = await realpath(a).catch(() => path.resolve(a));
  const rb = await realpath(b).catch(() => path.resolve(b));
  return ra === rb;
}

async function findRecord(records: WorktreeRecord[], dir: string): Promise<WorktreeRecord | undefined> {
  const wanted = new Set([dir, await realpath(dir).catch(() => dir)]);
  for (const record of records) {
    if (wanted.has(record.path) || wanted.has(await realpath(record.path).catch(() => record.path))) return record;
  }
  return undefined;
}

/** The registered (non-main) worktree at `dir`, or a clear refusal. */
async function requireWorktree(info: RepoInfo, dir: string): Promise<WorktreeRecord & { head: string }> {
  const record = await findRecord(await listWorktrees(info.top), path.resolve(dir));
  if (!record || record.prunable || (await realpath(record.path).catch(() => '')) === info.top) {
    throw new LoopboxError(`${path.resolve(dir)} is not a task worktree of ${info.top}`, {
      hint: 'Create it with ensureTaskWorktree (loopbox run) first.',
    });
  }
  if (!record.head) throw new LoopboxError(`The worktree ${record.path} has no HEAD commit`);
  return { ...record, path: await realpath(record.path), head: record.head };
}

/**
 * The worktree's admin directory (`<common>/worktrees/<id>`), found from the host side: each
 * admin dir's `gitdir` file names `<worktree>/.git`. The `.git` file inside the worktree is
 * agent-reachable in principle, so it is never read.
 */
async function findAdminDir(commonDir: string, realDir: string): Promise<string> {
  const base = path.join(commonDir, 'worktrees');
  for (const id of await readdir(base).catch(() => [])) {
    const gitdir = (await readFile(path.join(base, id, 'gitdir'), 'utf8').catch(() => '')).trim();
    if (!gitdir) continue;
    const wtDir = path.dirname(gitdir);
    if (wtDir === realDir || (await realpath(wtDir).catch(() => '')) === realDir) return path.join(base, id);
  }
  throw new LoopboxError(`Cannot find git's admin directory for the worktree ${realDir} under ${base}`, {
    hint: 'Run git worktree prune and let loopbox create the worktree again.',
  });
}

/** `ls-tree -r -l -z --full-tree`: path -> mode, oid, size (0 for submodules). */
async function lsTree(top: string, treeish: string): Promise<Map<string, TreeEntry & { size: number }>> {
  const out = await gitBytes(['ls-tree', '-r', '-l', '-z', '--full-tree', treeish], { cwd: top });
  const entries = new Map<string, TreeEntry & { size: number }>();
  let start = 0;
  while (start < out.length) {
    const end = out.indexOf(0, start);
    const record = out.subarray(start, end === -1 ? out.length : end);
    start = end === -1 ? out.length : end + 1;
    const tab = record.indexOf(9);
    const [mode, , oid, size] = record.subarray(0, tab).toString('latin1').trim().split(/ +/);
    const name = decodeName(record.subarray(tab + 1));
    if (name === undefined) {
      throw new LoopboxError(`${treeish} holds a path that is not valid UTF-8; loopbox cannot work on it`);
    }
    entries.set(name, { mode: mode as EntryMode, oid: oid ?? '', size: Number(size) || 0 });
  }
  return entries;
}

/** Raw blob bytes by object id, from one `cat-file --batch` (no filters, no textconv). */
async function readBlobs(top: string, oids: readonly string[]): Promise<Map<string, Buffer>> {
  const blobs = new Map<string, Buffer>();
  const unique = [...new Set(oids)];
  if (!unique.length) return blobs;
  const out = await gitBytes(['cat-file', '--batch'], { cwd: top, input: `${unique.join('\n')}\n` });
  let pos = 0;
  while (pos < out.length) {
    const nl = out.indexOf(10, pos);
    const [oid, type, size] = out.subarray(pos, nl).toString('latin1').split(' ');
    if (type !== 'blob' || !oid || size === undefined) {
      throw new LoopboxError(`Expected a blob from git cat-file, got: ${out.subarray(pos, nl).toString('latin1')}`);
    }
    const length = Number(size);
    blobs.set(oid, out.subarray(nl + 1, nl + 1 + length));
    pos = nl + 1 + length + 1;
  }
  return blobs;
}

/** Computes object ids like git does, for the repository's object format (sha1 or sha256). */
async function objectHasher(top: string): Promise<(content: Buffer) => string> {
  const format = (await git(['rev-parse', '--show-object-format'], { cwd: top })).trim();
  if (format !== 'sha1' && format !== 'sha256') throw new LoopboxError(`Unsupported git object format ${format} in ${top}`);
  return (content) => createHash(format).update(`blob ${content.length}\0`).update(content).digest('hex');
}

// Git refuses (or, in --index-info, silently drops) paths with a component git could read as its
// own directory, including NTFS short names and trailing dots/spaces (CVE-2019-1353, core.protectNTFS).
function isReservedGitName(name: string): boolean {
  return /^(?:\.git|git~\d+)(?:[. ]*$|:)/i.test(name);
}

// A symlinked .gitmodules is refused by git (CVE-2018-11235).
function isGitmodulesName(name: string): boolean {
  return /^(?:\.gitmodules|gitmod~\d+)[. ]*$/i.test(name);
}

function fileKind(mode: number): string {
  const type = mode & 0o170000;
  if (type === 0o010000) return 'fifo';
  if (type === 0o140000) return 'socket';
  if (type === 0o020000) return 'character device';
  if (type === 0o060000) return 'block device';
  return `mode ${type.toString(8)}`;
}
