// The snapshot's stat cache against an agent that tries to make a changed file look unchanged
// (issue 13): each test caches a worktree, plays one trick, and expects the next snapshot to
// read the file again and record the new content. The tricks keep size and mtime equal; only
// ctime (which no syscall sets) and the inode give them away. Real git repos, real files.
import { chmod, link, mkdir, mkdtemp, rename, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { git } from '../../src/git/hardened.js';
import { RACY_MARGIN_NS, StatCache } from '../../src/git/stat-cache.js';
import { ensureTaskWorktree, snapshotWorktree, type Snapshot } from '../../src/git/worktree.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
const sh = async (cwd: string, ...args: string[]): Promise<string> => (await execa('git', args, { cwd, env: userEnv })).stdout;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A repo with `a.txt` ("aaaa"), `b.txt` ("bbbb"), `d/x.txt`; its task worktree, cached. */
async function cachedWorktree(): Promise<{ repo: string; wt: string; first: Snapshot }> {
  const repo = await mkdtemp(path.join(tmpdir(), 'lbx-cache-'));
  dirs.push(repo);
  await sh(repo, 'init', '-q', '-b', 'main');
  for (const [k, v] of Object.entries({ 'a.txt': 'aaaa\n', 'b.txt': 'bbbb\n', 'd/x.txt': 'xxxx\n' })) {
    await mkdir(path.dirname(path.join(repo, k)), { recursive: true });
    await writeFile(path.join(repo, k), v);
  }
  await sh(repo, 'add', '-A');
  await sh(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init');
  const { dir } = await ensureTaskWorktree(repo, 'cache', path.join(repo, '.loopbox', 'worktrees', 'cache'));
  // Whole seconds, so that putting the times back (touch -r) restores them exactly.
  for (const f of ['a.txt', 'b.txt', 'd/x.txt']) await utimes(path.join(dir, f), FIXED, FIXED);
  // Files younger than the racy margin are never cached: let the checkout age past it.
  await sleep(Number(RACY_MARGIN_NS / 1_000_000n) + 200);
  const first = await snapshotWorktree(repo, dir);
  const second = await snapshotWorktree(repo, dir);
  // The cache is in use: the second snapshot read nothing.
  expect(first.filesRead).toBe(3);
  expect(second.filesRead).toBe(0);
  return { repo, wt: dir, first };
}

async function blobAt(repo: string, tree: string, p: string): Promise<string> {
  return git(['cat-file', 'blob', `${tree}:${p}`], { cwd: repo });
}

const FIXED = 1_600_000_000;

/** Sets atime/mtime of `file` back to what `ref` had (`touch -r`; the fixture's times are whole seconds). */
async function touchR(file: string, ref: { mtimeMs: number }): Promise<void> {
  await utimes(file, ref.mtimeMs / 1000, ref.mtimeMs / 1000);
}

describe('stat cache against a hostile agent', () => {
  it('same-size rewrite with the mtime put back (touch -r) is read again', async () => {
    const { repo, wt } = await cachedWorktree();
    const f = path.join(wt, 'a.txt');
    const before = await stat(f);
    await writeFile(f, 'AAAA\n');
    await touchR(f, before);
    expect((await stat(f)).mtimeMs).toBe(before.mtimeMs);
    const snap = await snapshotWorktree(repo, wt);
    expect(await blobAt(repo, snap.tree, 'a.txt')).toBe('AAAA\n');
    expect(snap.changed.map((c) => c.path)).toEqual(['a.txt']);
  }, 20_000);

  it('a file replaced by rename (same size, same mtime) is read again', async () => {
    const { repo, wt } = await cachedWorktree();
    const f = path.join(wt, 'a.txt');
    const before = await stat(f);
    await writeFile(path.join(wt, 'tmp'), 'ZZZZ\n');
    await touchR(path.join(wt, 'tmp'), before);
    await rename(path.join(wt, 'tmp'), f);
    const snap = await snapshotWorktree(repo, wt);
    expect(await blobAt(repo, snap.tree, 'a.txt')).toBe('ZZZZ\n');
  }, 20_000);

  it('a hardlink swap (a.txt becomes a link to b.txt, mtimes equal) is read again', async () => {
    const { repo, wt } = await cachedWorktree();
    const a = path.join(wt, 'a.txt');
    const before = await stat(a);
    await touchR(path.join(wt, 'b.txt'), before);
    await unlink(a);
    await link(path.join(wt, 'b.txt'), a);
    const snap = await snapshotWorktree(repo, wt);
    expect(await blobAt(repo, snap.tree, 'a.txt')).toBe('bbbb\n');
  }, 20_000);

  it('a write through a second hardlink, mtime put back, is read again', async () => {
    const { repo, wt } = await cachedWorktree();
    const a = path.join(wt, 'a.txt');
    const before = await stat(a);
    await link(a, path.join(wt, 'alias'));
    await unlink(path.join(wt, 'alias'));
    await writeFile(a, 'QQQQ\n');
    await touchR(a, before);
    const snap = await snapshotWorktree(repo, wt);
    expect(await blobAt(repo, snap.tree, 'a.txt')).toBe('QQQQ\n');
  }, 20_000);

  it('inode reuse: delete and recreate (often the same inode number), same size and mtime, is read again', async () => {
    const { repo, wt } = await cachedWorktree();
    const a = path.join(wt, 'a.txt');
    const before = await stat(a);
    await unlink(a);
    await writeFile(a, 'RRRR\n');
    await touchR(a, before);
    const snap = await snapshotWorktree(repo, wt);
    expect(await blobAt(repo, snap.tree, 'a.txt')).toBe('RRRR\n');
  }, 20_000);

  it('a directory replaced by a file, and a file by a directory, are seen', async () => {
    const { repo, wt } = await cachedWorktree();
    await rm(path.join(wt, 'd'), { recursive: true });
    await writeFile(path.join(wt, 'd'), 'xxxx\n');
    await unlink(path.join(wt, 'b.txt'));
    await mkdir(path.join(wt, 'b.txt'));
    await writeFile(path.join(wt, 'b.txt', 'y'), 'bbbb\n');
    const snap = await snapshotWorktree(repo, wt);
    expect(snap.changed.map((c) => `${c.status} ${c.path}`)).toEqual(['deleted b.txt', 'added b.txt/y', 'added d', 'deleted d/x.txt']);
  }, 20_000);

  it('a mode change (chmod +x) with the mtime put back is seen', async () => {
    const { repo, wt } = await cachedWorktree();
    const a = path.join(wt, 'a.txt');
    const before = await stat(a);
    await chmod(a, 0o755);
    await touchR(a, before);
    const snap = await snapshotWorktree(repo, wt);
    expect(snap.changed).toEqual([{ path: 'a.txt', status: 'modified', mode: '100755' }]);
  }, 20_000);

  it('racy entries (ctime not older than the cache start minus the margin) are never trusted', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-racy-'));
    dirs.push(dir);
    const file = path.join(dir, 'f');
    await writeFile(file, 'x');
    const stats = await stat(file, { bigint: true });
    const cacheFile = path.join(dir, 'cache');
    // Recorded by a snapshot that started right now: the file is younger than the margin.
    const cache = StatCache.empty(dir, stats.ctimeNs + 1n);
    cache.record('f', stats, 'deadbeef');
    expect(cache.size).toBe(0);
    // Recorded by a snapshot that started well after: trusted next time.
    const later = StatCache.empty(dir, stats.ctimeNs + RACY_MARGIN_NS + 1n);
    later.record('f', stats, 'deadbeef');
    await later.save(cacheFile);
    expect((await StatCache.load(cacheFile, dir)).lookup('f', stats)).toBe('deadbeef');
    // A cache saved for another directory is not used.
    expect((await StatCache.load(cacheFile, path.join(dir, 'other'))).lookup('f', stats)).toBeUndefined();
  });
});
