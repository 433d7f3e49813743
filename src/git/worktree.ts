// Task worktrees and host-side commits of what the agent left in them.
//
// The agent writes into the worktree; everything there is untrusted input. So the host never
// lets git look at the worktree: node walks it (lstat, O_NOFOLLOW, see safe-fs.ts), hashes blobs
// itself, hands git raw bytes on stdin (`hash-object --no-filters --stdin`) and builds the commit
// with plumbing on a temporary index (`update-index --index-info`, `write-tree`, `commit-tree`,
// `update-ref`). Checkout into the worktree is node's job too (raw blob bytes from
// `cat-file --batch`), so no smudge/clean filter, eol or ident conversion runs in either
// direction and what the agent sees is byte for byte what gets committed.
import { createHash, type Hash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { type FileHandle, appendFile, mkdir, readFile, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { LoopboxError, describe } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import { GitError, git, gitBytes, gitStatus, hardenedArgs, hardenedEnv, resolveCommit, splitZ } from './hardened.js';
import { StatCache } from './stat-cache.js';
import { DirHandle, closeSubdir, decodeName, isFsError, openSubdir } from './safe-fs.js';

export const DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024;
export const DEFAULT_MAX_FILES = 500_000;
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
  /** More files than this and the snapshot is refused. Default 500 000 (a repository of 100 000 tracked files is not rare). */
  maxFiles?: number;
  /** Directories deeper than this are skipped. Default 128. */
  maxDepth?: number;
  /**
   * Paths that always take the base tree's entry (protected paths), whatever the worktree holds
   * there; the ones the worktree changed are reported in `violations`.
   */
  keepBase?: (path: string) => boolean;
  /**
   * Remove from the worktree what can never be committed: nested `.git`, names git reserves or
   * that are not UTF-8, FIFOs, sockets, devices, anything inside a submodule path, directories
   * past maxDepth. Default false (the snapshot only reads).
   */
  removeRejected?: boolean;
  /** Use the stat cache in the worktree's admin directory (default true); false reads every file. */
  statCache?: boolean;
}

export interface Snapshot {
  /** The tree id: the loop's "diff hash"; the same tree twice means no progress. */
  tree: string;
  /** The commit the snapshot was compared with. */
  base: string;
  changed: ChangedPath[];
  skipped: SkippedPath[];
  /** Paths `keepBase` holds that the worktree changed: the tree has their base entry. */
  violations: string[];
  /** Regular files read and hashed (stat cache misses); the rest came from the stat cache. */
  filesRead: number;
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

/** Files up to this size are read into memory once; larger ones are streamed (hash, then write). */
const STREAM_ABOVE_BYTES = 8 * 1024 * 1024;
/** lstat calls (and small-file reads) in flight at once within one directory chunk. */
const PARALLEL_FILES = 32;
const STAT_CACHE_FILE = 'loopbox-stat-cache';
const SNAPSHOT_INDEX_FILE = 'loopbox-snapshot-index';

/**
 * Reads what the agent left in `dir` and writes it as a git tree, compared with the branch tip.
 * The tree is built at tree level: skipped paths, submodules and paths `keepBase` names take the
 * base tree's entry whatever the worktree holds. Only files whose stat data changed since the
 * last snapshot are read (see stat-cache.ts); only blobs git lacks are written, in one
 * `git fast-import` stream.
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
  const adminDir = await findAdminDir(info.commonDir, wt.path);
  const baseTree = await treeOf(info.top, base);
  const baseEntries = await lsTreeCached(info.top, baseTree);
  const cacheFile = path.join(adminDir, STAT_CACHE_FILE);
  let cache = options.statCache === false ? StatCache.empty(wt.path) : await StatCache.load(cacheFile, wt.path);
  let state = await walkWorktree(info.top, wt.path, baseEntries, cache, options);
  // A cache hit names a blob loopbox wrote earlier; if git pruned it since, read everything again.
  const unseen = [...state.hits].filter((oid) => !state.known.has(oid));
  if (unseen.length && (await missingObjects(info.top, unseen)).length) {
    cache = StatCache.empty(wt.path);
    state = await walkWorktree(info.top, wt.path, baseEntries, cache, options);
  }

  // Tree level: what takes the base's entry, whatever the worktree holds.
  const entries = state.entries;
  const keepSet = new Set(state.keep);
  const underKept = (p: string): boolean => {
    for (let i = p.indexOf('/'); i !== -1; i = p.indexOf('/', i + 1)) if (keepSet.has(p.slice(0, i))) return true;
    return keepSet.has(p);
  };
  const fromBase = (p: string): void => {
    const b = baseEntries.get(p);
    if (b) entries.set(p, { mode: b.mode, oid: b.oid });
    else entries.delete(p);
  };
  if (keepSet.size) for (const [p] of baseEntries) if (underKept(p)) fromBase(p);
  for (const p of state.gitlinks) fromBase(p);
  const violations: string[] = [];
  if (options.keepBase) {
    for (const c of compareTrees(baseEntries, entries)) {
      if (!options.keepBase(c.path)) continue;
      violations.push(c.path);
      fromBase(c.path);
    }
  }
  // A path kept from the base wins over what the worktree made of its parents or children:
  // the protected file `a` made a directory (`a/x`), or the protected `test/x` while `test` is
  // made a file. Such worktree entries are dropped and reported with the violations.
  const kept = new Set([...violations, ...state.keep, ...state.gitlinks].filter((p) => baseEntries.has(p)));
  if (kept.size) {
    const keptParents = new Set([...kept].flatMap(ancestors));
    for (const p of [...entries.keys()]) {
      if (!keptParents.has(p) && !ancestors(p).some((a) => kept.has(a))) continue;
      entries.delete(p);
      violations.push(p);
    }
  }

  const changed = compareTrees(baseEntries, entries);
  const tree = await writeTreeFrom(info.top, adminDir, baseTree, baseEntries, entries, changed);
  rememberTree(info.top, tree, entries, baseEntries);
  if (options.statCache !== false) await cache.save(cacheFile);
  return {
    tree,
    base,
    changed,
    skipped: state.skipped.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
    violations: violations.sort(),
    filesRead: state.filesRead,
  };
}

function ancestors(p: string): string[] {
  const out: string[] = [];
  for (let i = p.indexOf('/'); i !== -1; i = p.indexOf('/', i + 1)) out.push(p.slice(0, i));
  return out;
}

interface WalkState {
  top: string;
  hash: () => Hash;
  maxFileBytes: number;
  maxFiles: number;
  maxDepth: number;
  removeRejected: boolean;
  cache: StatCache;
  writer: BlobWriter;
  entries: Map<string, TreeEntry>;
  skipped: SkippedPath[];
  /** Skipped paths: their base entries (and those below them) are kept. */
  keep: string[];
  gitlinks: Set<string>;
  /** Object ids that exist already (in the base tree, or written by this snapshot). */
  known: Set<string>;
  /** Object ids taken from the stat cache. */
  hits: Set<string>;
  filesRead: number;
  /** Paths that take the base's entry: hashed to see whether they changed, never written. */
  keepBase: ((path: string) => boolean) | undefined;
}

async function walkWorktree(
  top: string,
  dir: string,
  baseEntries: Map<string, TreeEntry>,
  cache: StatCache,
  options: SnapshotOptions,
): Promise<WalkState> {
  const format = await objectFormat(top);
  const state: WalkState = {
    top,
    hash: () => createHash(format),
    maxFileBytes: options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES,
    maxFiles: options.maxFiles ?? DEFAULT_MAX_FILES,
    maxDepth: options.maxDepth ?? DEFAULT_MAX_DEPTH,
    removeRejected: options.removeRejected ?? false,
    cache,
    writer: new BlobWriter(top),
    entries: new Map(),
    skipped: [],
    keep: [],
    gitlinks: new Set([...baseEntries].filter(([, e]) => e.mode === '160000').map(([p]) => p)),
    known: new Set([...baseEntries.values()].map((e) => e.oid)),
    hits: new Set(),
    filesRead: 0,
    keepBase: options.keepBase,
  };
  const root = await DirHandle.open(dir);
  try {
    await walk(root, '', 0, state);
  } finally {
    await root.close();
    await state.writer.finish();
  }
  return state;
}

type Seen = { raw: Buffer; name: string; rel: string; stats: BigIntStats | undefined };

// One directory of the walk, in chunks of names (never the whole listing): lstat each entry in
// parallel, never stat; recurse into real directories only.
async function walk(dir: DirHandle, prefix: string, depth: number, state: WalkState): Promise<void> {
  for await (const chunk of dir.nameChunks(512)) {
    const seen: Seen[] = [];
    for (const raw of chunk) {
      const name = decodeName(raw);
      if (name === undefined) {
        await reject(state, dir, raw, `${prefix ? `${prefix}/` : ''}${JSON.stringify(raw.toString('latin1'))}`, 'file name is not valid UTF-8');
        continue;
      }
      const rel = prefix ? `${prefix}/${name}` : name;
      // The worktree's `.git` pointer file (masked in the container) is git's, not the agent's.
      if (prefix === '' && name === '.git') continue;
      if (isReservedGitName(name)) {
        // A nested repository (issue 7.3): its config (core.fsmonitor...) would run programs for
        // whoever runs git there. Never committed, and removed when asked.
        await reject(state, dir, raw, rel, 'a nested .git (or a name git reads as one) is not allowed');
        continue;
      }
      seen.push({ raw, name, rel, stats: undefined });
    }
    // Synchronous: one chunk (at most CHUNK names) at a time, microseconds per name.
    for (const s of seen) s.stats = dir.lstatBigSync(s.name);
    const files: Seen[] = [];
    for (const s of seen) {
      const { stats, rel, name } = s;
      if (!stats) continue; // gone since readdir
      if (state.gitlinks.has(rel)) {
        if (!stats.isDirectory()) await reject(state, dir, s.raw, rel, 'a submodule path replaced by a non-directory; kept as in the base');
        else await rejectContents(state, dir, name, rel);
        continue;
      }
      if (stats.isSymbolicLink()) {
        // The link itself is the content (its target text); it is never followed.
        if (isGitmodulesName(name)) {
          await reject(state, dir, s.raw, rel, 'git refuses a symlinked .gitmodules');
          continue;
        }
        const target = await dir.readlink(name).catch(() => undefined);
        if (target === undefined) continue; // gone since lstat
        await addBlob(state, rel, '120000', target);
      } else if (stats.isFile()) {
        if (stats.size > BigInt(state.maxFileBytes)) {
          skip(state, rel, `larger than ${state.maxFileBytes} bytes (${stats.size})`);
          continue;
        }
        const oid = state.cache.lookup(rel, stats);
        if (oid) {
          state.hits.add(oid);
          state.cache.record(rel, stats, oid);
          setEntry(state, rel, (stats.mode & 0o100n) !== 0n ? '100755' : '100644', oid);
        } else files.push(s);
      } else if (stats.isDirectory()) {
        if (depth + 1 >= state.maxDepth) {
          await reject(state, dir, s.raw, rel, `deeper than ${state.maxDepth} directories`);
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
        await reject(state, dir, s.raw, rel, `not a regular file, directory or symlink (${fileKind(Number(stats.mode))})`);
      }
    }
    // Cache misses: small files read in parallel, large ones streamed one at a time.
    const small = files.filter((s) => s.stats!.size <= BigInt(STREAM_ABOVE_BYTES));
    await forEachLimit(small, PARALLEL_FILES, (s) => readSmall(state, dir, s.name, s.rel));
    for (const s of files) if (s.stats!.size > BigInt(STREAM_ABOVE_BYTES)) await readLarge(state, dir, s.name, s.rel);
  }
}

/** Opens a regular file of the walk (no link followed), or records why it is skipped. */
async function openForRead(state: WalkState, dir: DirHandle, name: string, rel: string): Promise<{ handle: FileHandle; stats: BigIntStats } | undefined> {
  const opened = await dir.openFile(name);
  if (opened === 'unreadable' || !opened) {
    skip(state, rel, opened === 'unreadable' ? 'not readable by loopbox (permissions)' : 'changed from a regular file while being read');
    return undefined;
  }
  state.filesRead += 1;
  return opened;
}

async function readSmall(state: WalkState, dir: DirHandle, name: string, rel: string): Promise<void> {
  const opened = await openForRead(state, dir, name, rel);
  if (!opened) return;
  const { handle, stats } = opened;
  try {
    const limit = Math.min(state.maxFileBytes, STREAM_ABOVE_BYTES);
    // Read until EOF, not just `size`: the file may grow while we read.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(Math.max(Math.min(Number(stats.size) + 1, limit + 1) - total, 4096));
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > limit) return skip(state, rel, 'grew while being read');
      chunks.push(chunk.subarray(0, bytesRead));
    }
    const content = Buffer.concat(chunks, total);
    const oid = state.hash().update(`blob ${content.length}\0`).update(content).digest('hex');
    if (state.keepBase?.(rel)) return setEntry(state, rel, (stats.mode & 0o100n) !== 0n ? '100755' : '100644', oid);
    if (!state.known.has(oid)) {
      await state.writer.add(content);
      state.known.add(oid);
    }
    if (BigInt(total) === stats.size) state.cache.record(rel, stats, oid);
    setEntry(state, rel, (stats.mode & 0o100n) !== 0n ? '100755' : '100644', oid);
  } finally {
    await handle.close();
  }
}

// A file too large to hold: hash it streaming; only if git lacks the blob, stream it again into
// `git hash-object` and take it only if git computed the same id (it did not change meanwhile).
async function readLarge(state: WalkState, dir: DirHandle, name: string, rel: string): Promise<void> {
  const opened = await openForRead(state, dir, name, rel);
  if (!opened) return;
  const { handle, stats } = opened;
  try {
    if (stats.size > BigInt(state.maxFileBytes)) return skip(state, rel, `larger than ${state.maxFileBytes} bytes (${stats.size})`);
    const size = Number(stats.size);
    const hash = state.hash().update(`blob ${size}\0`);
    const buf = Buffer.allocUnsafe(1024 * 1024);
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, total);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > size) return skip(state, rel, 'changed while being read');
      hash.update(buf.subarray(0, bytesRead));
    }
    if (total !== size) return skip(state, rel, 'changed while being read');
    const oid = hash.digest('hex');
    if (state.keepBase?.(rel)) return setEntry(state, rel, (stats.mode & 0o100n) !== 0n ? '100755' : '100644', oid);
    if (!state.known.has(oid) && (await missingObjects(state.top, [oid])).length) {
      const proc = execa('git', hardenedArgs(['hash-object', '-w', '--no-filters', '--stdin']), {
        cwd: state.top,
        env: hardenedEnv(),
        extendEnv: false,
        stdin: 'pipe',
        reject: false,
        timeout: 600_000,
      });
      const stream = handle.createReadStream({ start: 0, autoClose: false });
      stream.pipe(proc.stdin);
      const result = await proc;
      if (result.exitCode !== 0) throw new LoopboxError(`git hash-object failed for ${rel}: ${String(result.stderr).slice(-500)}`);
      if (String(result.stdout).trim() !== oid) return skip(state, rel, 'changed while being read');
    }
    state.known.add(oid);
    state.cache.record(rel, stats, oid);
    setEntry(state, rel, (stats.mode & 0o100n) !== 0n ? '100755' : '100644', oid);
  } finally {
    await handle.close();
  }
}

function skip(state: WalkState, rel: string, reason: string): void {
  state.skipped.push({ path: rel, reason });
  state.keep.push(rel);
}

/** A path that can never be committed: skipped, and with `removeRejected`, removed from the worktree. */
async function reject(state: WalkState, dir: DirHandle, raw: Buffer, rel: string, reason: string): Promise<void> {
  let removed = false;
  if (state.removeRejected) {
    removed = await dir.remove(raw).then(
      (r) => r,
      () => false,
    );
  }
  state.skipped.push({ path: rel, reason: removed ? `${reason}; removed` : reason });
  state.keep.push(rel);
}

// A submodule's directory is empty in a task worktree (loopbox never checks submodules out):
// whatever is in it, the agent put there (issue 7.3).
async function rejectContents(state: WalkState, dir: DirHandle, name: string, rel: string): Promise<void> {
  const sub = await dir.openDir(name).catch(() => undefined);
  if (!sub) return;
  try {
    for await (const chunk of sub.nameChunks(512)) {
      for (const raw of chunk) {
        const shown = decodeName(raw) ?? JSON.stringify(raw.toString('latin1'));
        const removed = state.removeRejected ? await sub.remove(raw).catch(() => false) : false;
        state.skipped.push({ path: `${rel}/${shown}`, reason: `inside the submodule path ${rel}, which loopbox does not commit${removed ? '; removed' : ''}` });
      }
      if (state.removeRejected) break; // entries removed: the stream would skip or repeat some; caller walks again next time
    }
  } finally {
    await sub.close();
  }
}

function setEntry(state: WalkState, rel: string, mode: EntryMode, oid: string): void {
  if (state.entries.size >= state.maxFiles && !state.entries.has(rel)) {
    throw new LoopboxError(`The worktree holds more than ${state.maxFiles} files; refusing to snapshot it`, {
      hint: 'A partial snapshot would record the unread files as deleted. Raise the file limit or have the agent clean up (build outputs, node_modules).',
    });
  }
  state.entries.set(rel, { mode, oid });
}

// Hashes in node; only objects git does not have yet are handed to git, as bytes on stdin.
async function addBlob(state: WalkState, rel: string, mode: EntryMode, content: Buffer): Promise<void> {
  const oid = state.hash().update(`blob ${content.length}\0`).update(content).digest('hex');
  // A protected path's content is compared by id only; it never becomes an object in the repo.
  if (!state.known.has(oid) && !state.keepBase?.(rel)) {
    await state.writer.add(content);
    state.known.add(oid);
  }
  setEntry(state, rel, mode, oid);
}

/** Runs `fn` over `items`, at most `limit` at once. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * New blobs go to one `git fast-import` per snapshot (started on the first one), as raw bytes on
 * stdin: git never opens a worktree path, applies no filter, and 100 000 new files cost one
 * process, not 100 000. The tree write afterwards fails if any blob is missing.
 */
class BlobWriter {
  private proc: ResultPromise<{ stdin: 'pipe'; stdout: 'ignore'; stderr: 'pipe'; reject: false }> | undefined;

  constructor(private readonly top: string) {}

  async add(content: Buffer): Promise<void> {
    this.proc ??= execa('git', hardenedArgs(['fast-import', '--quiet', '--done']), {
      cwd: this.top,
      env: hardenedEnv(),
      extendEnv: false,
      stdin: 'pipe',
      stdout: 'ignore',
      stderr: 'pipe',
      reject: false,
    });
    const stdin = this.proc.stdin;
    const ok = stdin.write(`blob\ndata ${content.length}\n`) && stdin.write(content) && stdin.write('\n');
    if (!ok) await new Promise<void>((resolve, reject) => {
      stdin.once('drain', resolve);
      stdin.once('error', reject);
    });
  }

  async finish(): Promise<void> {
    if (!this.proc) return;
    const proc = this.proc;
    this.proc = undefined;
    proc.stdin.end('done\n');
    const result = await proc;
    if (result.exitCode !== 0) throw new LoopboxError(`git fast-import failed writing the snapshot's blobs: ${String(result.stderr).slice(-1000)}`);
  }
}

/** The ids among `oids` that the object database lacks (one `cat-file --batch-check`). */
async function missingObjects(top: string, oids: readonly string[]): Promise<string[]> {
  if (!oids.length) return [];
  const out = await git(['cat-file', '--batch-check'], { cwd: top, input: `${oids.join('\n')}\n` });
  return out
    .split('\n')
    .filter((l) => l.endsWith(' missing'))
    .map((l) => l.split(' ')[0]!);
}

async function treeOf(top: string, commit: string): Promise<string> {
  return (await git(['rev-parse', '--verify', '--end-of-options', `${commit}^{tree}`], { cwd: top })).trim();
}

// The last few trees' listings, by tree id (a tree id names its content): the next iteration's
// base is usually the tree this snapshot just wrote, so its ls-tree is skipped.
const treeListings = new Map<string, Map<string, TreeEntry & { size: number }>>();

async function lsTreeCached(top: string, tree: string): Promise<Map<string, TreeEntry & { size: number }>> {
  const key = `${top}\0${tree}`;
  const hit = treeListings.get(key);
  if (hit) return hit;
  const entries = await lsTree(top, tree);
  remember(key, entries);
  return entries;
}

function rememberTree(top: string, tree: string, entries: Map<string, TreeEntry>, base: Map<string, TreeEntry & { size: number }>): void {
  const key = `${top}\0${tree}`;
  if (treeListings.has(key)) return;
  // Sizes are used for batching checkouts only; unknown ones (new blobs) count as 0.
  const sized = new Map<string, TreeEntry & { size: number }>();
  for (const [p, e] of entries) {
    const b = base.get(p);
    sized.set(p, { mode: e.mode, oid: e.oid, size: b && b.oid === e.oid ? b.size : 0 });
  }
  remember(key, sized);
}

function remember(key: string, entries: Map<string, TreeEntry & { size: number }>): void {
  treeListings.delete(key);
  treeListings.set(key, entries);
  while (treeListings.size > 2) treeListings.delete(treeListings.keys().next().value!);
}

/**
 * Writes the tree for `entries` on a host-only index in the worktree's admin directory that
 * holds the base tree: only the changed paths are updated, so git rehashes only the trees on
 * their way to the root. Then checks that git kept exactly the changed entries.
 */
async function writeTreeFrom(
  top: string,
  adminDir: string,
  baseTree: string,
  base: Map<string, TreeEntry>,
  entries: Map<string, TreeEntry>,
  changed: ChangedPath[],
): Promise<string> {
  if (!changed.length) return baseTree;
  const indexFile = path.join(adminDir, SNAPSHOT_INDEX_FILE);
  const env = { GIT_INDEX_FILE: indexFile };
  // read-tree: the index is this host's own file, but it is made from the base tree every time
  // (one pass in C), never trusted from an earlier snapshot.
  await git(['read-tree', baseTree], { cwd: top, env });
  const zero = '0'.repeat(baseTree.length);
  const lines: Buffer[] = [];
  for (const c of changed) if (c.status === 'deleted') lines.push(Buffer.from(`0 ${zero}\t${c.path}\0`, 'utf8'));
  for (const c of changed) {
    if (c.status === 'deleted') continue;
    const e = entries.get(c.path)!;
    lines.push(Buffer.from(`${e.mode} ${e.oid}\t${c.path}\0`, 'utf8'));
  }
  await git(['update-index', '-z', '--index-info'], { cwd: top, env, input: Buffer.concat(lines) });
  const tree = (await git(['write-tree'], { cwd: top, env })).trim();
  // update-index --index-info only warns ("Ignoring path") for paths it refuses; never let a
  // tree silently differ from what loopbox reports.
  const written = changed.length > 2000 ? await lsTree(top, tree) : await lsTreePaths(top, tree, changed.map((c) => c.path));
  const lost = changed.filter((c) => {
    const w = written.get(c.path);
    const e = entries.get(c.path);
    return e ? w?.oid !== e.oid || w.mode !== e.mode : w !== undefined;
  });
  if (lost.length || (changed.length > 2000 && written.size !== entries.size)) {
    throw new LoopboxError(`git did not keep ${lost.length || 'some'} path(s) in the snapshot tree: ${lost.slice(0, 5).map((c) => c.path).join(', ')}`);
  }
  void base;
  return tree;
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
  const wanted = [...new Set(paths)].sort();
  for (const p of wanted) checkRelativePath(p);
  // Only the entries at and below the paths asked for: the cost follows them, not the tree.
  const base = wanted.length > 1000 ? await lsTreeCached(info.top, await treeOf(info.top, head)) : await lsTreePaths(info.top, head, wanted);
  const result: RestoreResult = { restored: [], removed: [] };
  const root = await DirHandle.open(wt.path);
  try {
    for (const p of wanted) {
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
  // A nested `.git` may be named: restoring removes it (no base tree holds such a path). The
  // top-level one is the worktree's link to the repository.
  if (p === '' || parts.some((c) => c === '' || c === '.' || c === '..') || isReservedGitName(parts[0]!) || p.includes('\0')) {
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

export type TreeListing = Array<TreeEntry & { path: string; size: number }>;

/** Every entry of a tree (or commit), in git's order, with blob sizes: for the verify copy. */
export async function listTree(repo: string, treeish: string): Promise<TreeListing> {
  const info = await repoInfo(repo);
  const tree = await treeOf(info.top, treeish);
  return [...(await lsTreeCached(info.top, tree))].map(([p, e]) => ({ path: p, ...e }));
}

/** `ls-tree -r -l -z --full-tree`: path -> mode, oid, size (0 for submodules). */
async function lsTree(top: string, treeish: string): Promise<Map<string, TreeEntry & { size: number }>> {
  return parseLsTree(treeish, await gitBytes(['ls-tree', '-r', '-l', '-z', '--full-tree', treeish], { cwd: top }));
}

/** The entries at and below `paths` only (literal pathspecs: GIT_LITERAL_PATHSPECS is set). */
async function lsTreePaths(top: string, treeish: string, paths: readonly string[]): Promise<Map<string, TreeEntry & { size: number }>> {
  if (!paths.length) return new Map();
  return parseLsTree(treeish, await gitBytes(['ls-tree', '-r', '-l', '-z', '--full-tree', treeish, '--', ...paths], { cwd: top }));
}

function parseLsTree(treeish: string, out: Buffer): Map<string, TreeEntry & { size: number }> {
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

/** The repository's object format (sha1 or sha256): object ids are hashed like git does. */
async function objectFormat(top: string): Promise<'sha1' | 'sha256'> {
  const format = (await git(['rev-parse', '--show-object-format'], { cwd: top })).trim();
  if (format !== 'sha1' && format !== 'sha256') throw new LoopboxError(`Unsupported git object format ${format} in ${top}`);
  return format;
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
