// Snapshot: what the agent left in a task worktree, written as a git tree. Node walks the
// worktree (lstat, O_NOFOLLOW, see safe-fs.ts) and hashes blobs itself; only blobs git lacks are
// handed to it, as raw bytes in one `git fast-import` stream (the blob writer below), and the
// tree is written on a host-only index.
import { createHash, type Hash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { text } from 'node:stream/consumers';
import { LoopboxError } from '../common/errors.js';
import { type GitStream, git, gitStream, resolveCommit } from './hardened.js';
import { StatCache } from './stat-cache.js';
import { DirHandle, decodeName, isFsError } from './safe-fs.js';
import {
  type EntryMode,
  type TreeEntry,
  findAdminDir,
  isReservedGitName,
  lsTree,
  lsTreeCached,
  lsTreePaths,
  missingObjects,
  objectFormat,
  rememberTree,
  repoInfo,
  requireWorktree,
  treeOf,
} from './tree.js';

export const DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024;
export const DEFAULT_MAX_FILES = 500_000;
export const DEFAULT_MAX_DEPTH = 128;

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
      const proc = gitStream(['hash-object', '-w', '--no-filters', '--stdin'], { cwd: state.top, timeoutMs: 600_000 });
      const answer = text(proc.stdout);
      handle.createReadStream({ start: 0, autoClose: false }).pipe(proc.stdin);
      await proc.done();
      if ((await answer).trim() !== oid) return skip(state, rel, 'changed while being read');
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
  private proc: GitStream | undefined;

  constructor(private readonly top: string) {}

  async add(content: Buffer): Promise<void> {
    if (!this.proc) {
      this.proc = gitStream(['fast-import', '--quiet', '--done'], { cwd: this.top, timeoutMs: 0 });
      this.proc.stdout.resume();
    }
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
    await proc.done(); // a GitError names fast-import, its exit code and stderr
  }
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
