// Tree plumbing for loopbox's host-side git: the repository and its worktrees as git records
// them, tree listings (ls-tree, with a small cache), raw blob reads (cat-file --batch), and the
// writer of a tree into a directory. Git never reads the agent's worktree here (see worktree.ts).
import { readFile, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { LoopboxError, describe } from '../common/errors.js';
import { GitError, git, gitBytes, gitStatus } from './hardened.js';
import { DirHandle, closeSubdir, decodeName, openSubdir } from './safe-fs.js';

export type EntryMode = '100644' | '100755' | '120000' | '160000';

export interface TreeEntry {
  mode: EntryMode;
  oid: string;
}

export interface RepoInfo {
  /** Realpath of the repository's top-level directory. */
  top: string;
  commonDir: string;
}

export interface WorktreeRecord {
  path: string;
  head?: string;
  branch?: string;
  prunable: boolean;
}

/** The ids among `oids` that the object database lacks (one `cat-file --batch-check`). */
export async function missingObjects(top: string, oids: readonly string[]): Promise<string[]> {
  if (!oids.length) return [];
  const out = await git(['cat-file', '--batch-check'], { cwd: top, input: `${oids.join('\n')}\n` });
  return out
    .split('\n')
    .filter((l) => l.endsWith(' missing'))
    .map((l) => l.split(' ')[0]!);
}

export async function treeOf(top: string, commit: string): Promise<string> {
  return (await git(['rev-parse', '--verify', '--end-of-options', `${commit}^{tree}`], { cwd: top })).trim();
}

// The last few trees' listings, by tree id (a tree id names its content): the next iteration's
// base is usually the tree this snapshot just wrote, so its ls-tree is skipped.
const treeListings = new Map<string, Map<string, TreeEntry & { size: number }>>();

export async function lsTreeCached(top: string, tree: string): Promise<Map<string, TreeEntry & { size: number }>> {
  const key = `${top}\0${tree}`;
  const hit = treeListings.get(key);
  if (hit) return hit;
  const entries = await lsTree(top, tree);
  remember(key, entries);
  return entries;
}

export function rememberTree(top: string, tree: string, entries: Map<string, TreeEntry>, base: Map<string, TreeEntry & { size: number }>): void {
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

/** Replaces whatever is at `rel` by a blob or symlink, creating real parent directories as needed. */
export async function writeEntry(root: DirHandle, rel: string, mode: EntryMode, content: Buffer): Promise<void> {
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

// ---------------------------------------------------------------------------------------------
// Repository helpers

export async function repoInfo(repo: string): Promise<RepoInfo> {
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

export async function assertRefName(top: string, ref: string): Promise<void> {
  const { exitCode } = await gitStatus(['check-ref-format', ref], { cwd: top, okExitCodes: [1] });
  if (exitCode !== 0) throw new LoopboxError(`${ref} is not a valid git branch name`);
}

/** `git worktree list --porcelain -z`: records separated by an empty field. */
export async function listWorktrees(top: string): Promise<WorktreeRecord[]> {
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

export async function samePath(a: string, b: string): Promise<boolean> {
  const ra = await realpath(a).catch(() => path.resolve(a));
  const rb = await realpath(b).catch(() => path.resolve(b));
  return ra === rb;
}

export async function findRecord(records: WorktreeRecord[], dir: string): Promise<WorktreeRecord | undefined> {
  const wanted = new Set([dir, await realpath(dir).catch(() => dir)]);
  for (const record of records) {
    if (wanted.has(record.path) || wanted.has(await realpath(record.path).catch(() => record.path))) return record;
  }
  return undefined;
}

/** The registered (non-main) worktree at `dir`, or a clear refusal. */
export async function requireWorktree(info: RepoInfo, dir: string): Promise<WorktreeRecord & { head: string }> {
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
export async function findAdminDir(commonDir: string, realDir: string): Promise<string> {
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
export async function lsTree(top: string, treeish: string): Promise<Map<string, TreeEntry & { size: number }>> {
  return parseLsTree(treeish, await gitBytes(['ls-tree', '-r', '-l', '-z', '--full-tree', treeish], { cwd: top }));
}

/** The entries at and below `paths` only (literal pathspecs: GIT_LITERAL_PATHSPECS is set). */
export async function lsTreePaths(top: string, treeish: string, paths: readonly string[]): Promise<Map<string, TreeEntry & { size: number }>> {
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
export async function readBlobs(top: string, oids: readonly string[]): Promise<Map<string, Buffer>> {
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
export async function objectFormat(top: string): Promise<'sha1' | 'sha256'> {
  const format = (await git(['rev-parse', '--show-object-format'], { cwd: top })).trim();
  if (format !== 'sha1' && format !== 'sha256') throw new LoopboxError(`Unsupported git object format ${format} in ${top}`);
  return format;
}

// Git refuses (or, in --index-info, silently drops) paths with a component git could read as its
// own directory, including NTFS short names and trailing dots/spaces (CVE-2019-1353, core.protectNTFS).
export function isReservedGitName(name: string): boolean {
  return /^(?:\.git|git~\d+)(?:[. ]*$|:)/i.test(name);
}
