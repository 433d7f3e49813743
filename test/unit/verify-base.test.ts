// The verify base (issue 13): a host directory that must hold exactly one git tree, moved from
// tree to tree by the difference alone. Each test compares the base, entry by entry (type,
// mode, bytes, link target), with the tree as git lists it; the hostile cases are trees an agent
// could commit to make the update write outside the base. Real git, real files.
import { createHash } from 'node:crypto';
import { lstat, mkdtemp, opendir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { BaseTimeoutError, VerifyBase } from '../../src/verify/base.js';

const dirs: string[] = [];
// Removing the 100,000-file tree takes seconds on a loaded 2-core machine: more than the
// default 10 s hook limit allows.
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
}, 120_000);

const env = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
const sh = async (cwd: string, args: string[], input?: string): Promise<string> => (await execa('git', args, { cwd, env, input })).stdout;
const BIG = { maxBytes: 1024 ** 4, deadline: Number.MAX_SAFE_INTEGER };

async function temp(prefix: string): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

/** A tree made with plumbing from `entries`: path -> file content, or { link } / { exec }. */
type Spec = Record<string, string | { link: string } | { exec: string }>;
async function makeTree(repo: string, spec: Spec): Promise<string> {
  const index = path.join(repo, '.git', 'scratch-index');
  await rm(index, { force: true });
  const lines: string[] = [];
  for (const [p, v] of Object.entries(spec)) {
    const content = typeof v === 'string' ? v : 'link' in v ? v.link : v.exec;
    const oid = await sh(repo, ['hash-object', '-w', '--stdin'], content);
    const mode = typeof v === 'string' ? '100644' : 'link' in v ? '120000' : '100755';
    lines.push(`${mode} ${oid}\t${p}`);
  }
  await execa('git', ['update-index', '--add', '--index-info'], { cwd: repo, env: { ...env, GIT_INDEX_FILE: index }, input: `${lines.join('\n')}\n` });
  return (await execa('git', ['write-tree'], { cwd: repo, env: { ...env, GIT_INDEX_FILE: index } })).stdout;
}

async function newRepo(): Promise<string> {
  const repo = await temp('lbx-base-repo-');
  await sh(repo, ['init', '-q', '-b', 'main']);
  return repo;
}

/** What the base holds: path -> "file 644 <sha>" / "link <target>" / "dir" (directories listed too). */
async function describeDir(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    const dir = await opendir(path.join(root, rel));
    for await (const e of dir) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      const st = await lstat(path.join(root, p));
      if (st.isSymbolicLink()) out.set(p, `link ${await readlink(path.join(root, p))}`);
      else if (st.isDirectory()) {
        out.set(p, 'dir');
        await walk(p);
      } else out.set(p, `file ${(st.mode & 0o777).toString(8)} ${createHash('sha1').update(await readFile(path.join(root, p))).digest('hex')}`);
    }
  };
  await walk('');
  return out;
}

/** The same description of a git tree, from `ls-tree` and the blobs. */
async function describeTree(repo: string, tree: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const line of (await sh(repo, ['ls-tree', '-r', '-t', tree])).split('\n').filter(Boolean)) {
    const [meta, p] = line.split('\t') as [string, string];
    const [mode, type, oid] = meta.split(' ') as [string, string, string];
    if (type === 'tree') out.set(p, 'dir');
    else {
      const blob = (await execa('git', ['cat-file', 'blob', oid], { cwd: repo, env, encoding: 'buffer', stripFinalNewline: false })).stdout;
      if (mode === '120000') out.set(p, `link ${Buffer.from(blob).toString('utf8')}`);
      else out.set(p, `file ${mode === '100755' ? '755' : '644'} ${createHash('sha1').update(blob).digest('hex')}`);
    }
  }
  return out;
}

describe('verify base', () => {
  it('holds exactly the tree after each change: deletions, symlinks, type and mode changes', async () => {
    const repo = await newRepo();
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    const first = await makeTree(repo, {
      'a.txt': 'aaaa\n',
      'd/x.txt': 'x\n',
      'd/deep/y.txt': 'y\n',
      'gone/only.txt': 'only\n',
      's': { link: 'a.txt' },
      'becomes-file/z.txt': 'z\n',
      'run.sh': 'echo hi\n',
    });
    const one = await base.update(first, BIG);
    expect(one.rebuilt).toBe(true);
    expect(await describeDir(base.root)).toEqual(await describeTree(repo, first));

    const second = await makeTree(repo, {
      'a.txt': 'AAAA\n', // same size, new content
      'd/x.txt': 'x\n',
      // d/deep/y.txt deleted: d/deep must go too
      // gone/only.txt deleted: gone/ must go
      's/inside.txt': 'was a symlink\n', // symlink replaced by a directory
      'becomes-file': 'now a file\n', // directory replaced by a file
      'run.sh': { exec: 'echo hi\n' }, // mode change only
      'new link': { link: '../../outside' },
    });
    const two = await base.update(second, BIG);
    expect(two.rebuilt).toBe(false);
    expect(await describeDir(base.root)).toEqual(await describeTree(repo, second));

    // And back: the reverse difference restores the first tree exactly.
    await base.update(first, BIG);
    expect(await describeDir(base.root)).toEqual(await describeTree(repo, first));
  });

  it('writes only what changed', async () => {
    const repo = await newRepo();
    const spec: Spec = {};
    for (let i = 0; i < 60; i += 1) spec[`f/${i}.txt`] = `file ${i}\n`;
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    const first = await base.update(await makeTree(repo, spec), BIG);
    expect(first.written).toBe(60);
    spec['f/7.txt'] = 'changed\n';
    const second = await base.update(await makeTree(repo, spec), BIG);
    expect({ written: second.written, removed: second.removed, entries: second.entries }).toEqual({ written: 1, removed: 1, entries: 60 });
    const same = await base.update(second.tree, BIG);
    expect(same.written + same.removed).toBe(0);
  });

  it('never writes through a symlink the previous tree had, whatever the next tree names', async () => {
    const repo = await newRepo();
    const outside = await temp('lbx-base-outside-');
    await writeFile(path.join(outside, 'victim'), 'untouched\n');
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    await base.update(await makeTree(repo, { evil: { link: outside } }), BIG);
    const next = await makeTree(repo, { 'evil/victim': 'overwritten\n', 'evil/new': 'planted\n' });
    await base.update(next, BIG);
    expect(await readFile(path.join(outside, 'victim'), 'utf8')).toBe('untouched\n');
    await expect(lstat(path.join(outside, 'new'))).rejects.toThrow();
    expect(await describeDir(base.root)).toEqual(await describeTree(repo, next));
  });

  it('rebuilds from empty when the recorded state is gone (an interrupted update)', async () => {
    const repo = await newRepo();
    const dir = path.join(await temp('lbx-base-'), 'base');
    const base = new VerifyBase(repo, dir);
    const tree = await makeTree(repo, { 'a.txt': 'a\n' });
    await base.update(await makeTree(repo, { 'old.txt': 'old\n', 'a.txt': 'a\n' }), BIG);
    // An update that died half way: a stray file and no state.
    await writeFile(path.join(base.root, 'stray'), 'left over\n');
    await rm(path.join(dir, 'state.json'));
    const again = await base.update(tree, BIG);
    expect(again.rebuilt).toBe(true);
    expect(await describeDir(base.root)).toEqual(await describeTree(repo, tree));
  });

  it('refuses a tree past maxBytes and a deadline already passed, and keeps no state after', async () => {
    const repo = await newRepo();
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    const tree = await makeTree(repo, { 'a.txt': 'x'.repeat(1000), 'b.txt': 'y'.repeat(1000) });
    await expect(base.update(tree, { maxBytes: 1500, deadline: Number.MAX_SAFE_INTEGER })).rejects.toThrow(/verify\.maxCopy/);
    expect(await base.state()).toBeUndefined();
    await expect(base.update(tree, { maxBytes: 1e9, deadline: Date.now() - 1 })).rejects.toBeInstanceOf(BaseTimeoutError);
    expect(await base.state()).toBeUndefined();
    await base.update(tree, BIG);
    expect((await base.state())?.bytes).toBe(2000);
  });

  it('streams a 200 MB tracked binary without holding it in memory', async () => {
    const repo = await newRepo();
    // 200 MB of incompressible bytes, hashed into git from a stream.
    const blob = (
      await execa('sh', ['-c', 'head -c 209715200 /dev/urandom | git hash-object -w --stdin'], { cwd: repo, env })
    ).stdout.trim();
    const index = path.join(repo, '.git', 'big-index');
    await execa('git', ['update-index', '--add', '--cacheinfo', `100644,${blob},big.bin`], { cwd: repo, env: { ...env, GIT_INDEX_FILE: index } });
    const tree = (await execa('git', ['write-tree'], { cwd: repo, env: { ...env, GIT_INDEX_FILE: index } })).stdout;
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    const before = process.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    try {
      await base.update(tree, BIG);
    } finally {
      clearInterval(sampler);
    }
    expect((await lstat(path.join(base.root, 'big.bin'))).size).toBe(209715200);
    const written = (await execa('git', ['hash-object', path.join(base.root, 'big.bin')], { cwd: repo, env })).stdout.trim();
    expect(written).toBe(blob);
    // Holding the file whole would add 200 MB; streaming holds a few pipe chunks.
    expect(peak - before).toBeLessThan(100 * 1024 ** 2);
  }, 120_000);

  it('handles 100,000 files in one directory, then moves by one change', async () => {
    const repo = await newRepo();
    const oid = await sh(repo, ['hash-object', '-w', '--stdin'], 'same content\n');
    // One flat tree of 100,000 entries made with mktree: no listing of it is built here either.
    const lines = Array.from({ length: 100_000 }, (_, i) => `100644 blob ${oid}\tf${i}.txt`).join('\n');
    const flat = await sh(repo, ['mktree'], `${lines}\n`);
    const top = await sh(repo, ['mktree'], `040000 tree ${flat}\tbig\n`);
    const base = new VerifyBase(repo, path.join(await temp('lbx-base-'), 'base'));
    const first = await base.update(top, BIG);
    expect(first.entries).toBe(100_000);
    let count = 0;
    for await (const _ of await opendir(path.join(base.root, 'big'))) count += 1;
    expect(count).toBe(100_000);
    // One entry removed, one added: only they are touched.
    const other = await sh(repo, ['hash-object', '-w', '--stdin'], 'other\n');
    const lines2 = lines.replace(`\tf5.txt`, `\tf5.renamed`).replace(new RegExp(`${oid}(\tf99999\\.txt)`), `${other}$1`);
    const flat2 = await sh(repo, ['mktree'], `${lines2}\n`);
    const top2 = await sh(repo, ['mktree'], `040000 tree ${flat2}\tbig\n`);
    const second = await base.update(top2, BIG);
    expect({ written: second.written, removed: second.removed, entries: second.entries }).toEqual({ written: 2, removed: 2, entries: 100_000 });
    await expect(lstat(path.join(base.root, 'big', 'f5.txt'))).rejects.toThrow();
    expect(await readFile(path.join(base.root, 'big', 'f5.renamed'), 'utf8')).toBe('same content\n');
    expect(await readFile(path.join(base.root, 'big', 'f99999.txt'), 'utf8')).toBe('other\n');
  }, 180_000);
});
