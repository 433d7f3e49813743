// Host-side git against real repositories: each test plants an attack the agent (or a hostile
// repo config it can name) could set up, and shows nothing runs and nothing outside the worktree
// is read or written. Each test makes its own repos under the OS tmpdir and removes them after.
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rename, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { LoopboxError } from '../../src/common/errors.js';
import { matchesAny } from '../../src/git/glob.js';
import { DirHandle } from '../../src/git/safe-fs.js';
import { GitError, git } from '../../src/git/hardened.js';
import {
  commitSnapshot,
  ensureTaskWorktree,
  isDirtyRepo,
  restorePaths,
  snapshotWorktree,
  syncWorktreeIndex,
  type Snapshot,
} from '../../src/git/worktree.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), `lbx-git-${prefix}-`));
  dirs.push(dir);
  return dir;
}

// The test's own git plays the user: plain git, no hardening, but never the developer's config.
const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
async function sh(cwd: string, ...args: string[]): Promise<string> {
  return (await execa('git', args, { cwd, env: userEnv })).stdout;
}

/** changesets' gitdir(): a real repo with a forced `main` branch, no signing, gc off, one commit. */
async function gitdir(files: Record<string, string> = { 'README.md': '# test\n' }): Promise<string> {
  const repo = await tempDir('repo');
  await sh(repo, 'init', '-q', '-b', 'main');
  await sh(repo, 'config', 'user.name', 'Test');
  await sh(repo, 'config', 'user.email', 'test@example.com');
  await sh(repo, 'config', 'commit.gpgsign', 'false');
  await sh(repo, 'config', 'gc.auto', '0');
  for (const [file, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(repo, file)), { recursive: true });
    await writeFile(path.join(repo, file), content);
  }
  await sh(repo, 'add', '-A');
  await sh(repo, 'commit', '-q', '-m', 'init');
  return repo;
}

/** A script that touches `marker/<name>` (and, as a filter, passes stdin through). */
async function markerScript(markers: string, name: string, filter = false): Promise<string> {
  const file = path.join(markers, '..', `${path.basename(markers)}-${name}.sh`);
  await writeFile(file, `#!/bin/sh\ntouch '${path.join(markers, name)}'\n${filter ? 'cat\n' : ''}`);
  await chmod(file, 0o755);
  return file;
}

async function markerDir(): Promise<string> {
  const base = await tempDir('markers');
  const markers = path.join(base, 'markers');
  await mkdir(markers);
  return markers;
}

/** The usual iteration: worktree, agent writes, snapshot, commit, sync. */
async function iteration(repo: string, agent: (dir: string) => Promise<void>, task = 'demo'): Promise<{ dir: string; snap: Snapshot; commit: string }> {
  const wt = await ensureTaskWorktree(repo, task, path.join(repo, '.loopbox', 'worktrees', task));
  await agent(wt.dir);
  const snap = await snapshotWorktree(repo, wt.dir);
  const commit = await commitSnapshot(repo, wt.branch, snap.tree, wt.head, `iteration of ${task}`);
  await syncWorktreeIndex(repo, wt.dir);
  return { dir: wt.dir, snap, commit };
}

async function catBlob(repo: string, rev: string): Promise<Buffer> {
  return Buffer.from((await execa('git', ['cat-file', 'blob', rev], { cwd: repo, env: userEnv, encoding: 'buffer' })).stdout);
}

/** Every object's bytes in the repository, for "this never got in" checks. */
async function allObjects(repo: string): Promise<Buffer> {
  const run = await execa('git', ['cat-file', '--batch-all-objects', '--batch'], { cwd: repo, env: userEnv, encoding: 'buffer' });
  return Buffer.from(run.stdout);
}

async function snapshotOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir, { recursive: true })).sort()) {
    const full = path.join(dir, name);
    const st = await lstat(full);
    out[name] = st.isSymbolicLink() ? `-> ${await readlink(full)}` : st.isFile() ? await readFile(full, 'utf8') : 'dir';
  }
  return out;
}

describe('hardened git runner', () => {
  it('throws a GitError with the command, exit code and stderr', async () => {
    const repo = await gitdir();
    const error = await git(['rev-parse', 'nope^{commit}'], { cwd: repo }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GitError);
    expect(error).toBeInstanceOf(LoopboxError);
    const failure = (error as GitError).failure;
    expect(failure.exitCode).toBe(128);
    expect(failure.args).toEqual(['rev-parse', 'nope^{commit}']);
    expect((error as GitError).message).toMatch(/git rev-parse nope.*\n.*cwd: /s);
  });

  it('ignores GIT_DIR and friends from the parent environment', async () => {
    const repo = await gitdir();
    const saved = { dir: process.env.GIT_DIR, tree: process.env.GIT_WORK_TREE };
    process.env.GIT_DIR = '/nonexistent/.git';
    process.env.GIT_WORK_TREE = '/nonexistent';
    try {
      expect((await git(['rev-parse', '--show-toplevel'], { cwd: repo })).trim()).toBe(repo);
    } finally {
      if (saved.dir === undefined) delete process.env.GIT_DIR;
      else process.env.GIT_DIR = saved.dir;
      if (saved.tree === undefined) delete process.env.GIT_WORK_TREE;
      else process.env.GIT_WORK_TREE = saved.tree;
    }
  });
});

describe('ensureTaskWorktree', () => {
  it('branches loopbox/<task> from HEAD, checks it out, excludes .loopbox/, and resumes', async () => {
    const repo = await gitdir({ 'src/a.ts': 'export const a = 1;\n', 'run.sh': '#!/bin/sh\n' });
    await chmod(path.join(repo, 'run.sh'), 0o755);
    await sh(repo, 'add', 'run.sh');
    await sh(repo, 'commit', '-q', '-m', 'exec');
    const head = await sh(repo, 'rev-parse', 'HEAD');
    const wtDir = path.join(repo, '.loopbox', 'worktrees', 'demo');
    const wt = await ensureTaskWorktree(repo, 'demo', wtDir);
    expect(wt).toEqual({ branch: 'loopbox/demo', dir: wtDir, head, created: true });
    expect(await readFile(path.join(wtDir, 'src/a.ts'), 'utf8')).toBe('export const a = 1;\n');
    expect((await lstat(path.join(wtDir, 'run.sh'))).mode & 0o777).toBe(0o755);
    expect(await readFile(path.join(repo, '.git/info/exclude'), 'utf8')).toContain('/.loopbox/\n');
    // The user's repo and the new worktree both look clean to plain git.
    expect(await sh(repo, 'status', '--porcelain')).toBe('');
    expect(await sh(wtDir, 'status', '--porcelain')).toBe('');
    expect(await sh(wtDir, 'symbolic-ref', 'HEAD')).toBe('refs/heads/loopbox/demo');

    const again = await ensureTaskWorktree(repo, 'demo', wtDir);
    expect(again).toEqual({ ...wt, created: false });
    // Excluded once, not once per call.
    expect((await readFile(path.join(repo, '.git/info/exclude'), 'utf8')).match(/\/\.loopbox\//g)).toHaveLength(1);
  });

  it('resumes an existing branch in a fresh directory from the branch tip', async () => {
    const repo = await gitdir();
    const first = await iteration(repo, (dir) => writeFile(path.join(dir, 'progress.txt'), 'step 1\n'));
    await git(['worktree', 'remove', '--force', first.dir], { cwd: repo });
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo-2'));
    expect(wt.created).toBe(true);
    expect(wt.head).toBe(first.commit);
    expect(await readFile(path.join(wt.dir, 'progress.txt'), 'utf8')).toBe('step 1\n');
  });

  it('refuses a directory that is not a repo, a repo without commits, and unsafe task names', async () => {
    const plain = await tempDir('plain');
    await expect(ensureTaskWorktree(plain, 'demo', path.join(plain, 'wt'))).rejects.toThrow(/is not a git repository/);
    const empty = await tempDir('empty');
    await sh(empty, 'init', '-q', '-b', 'main');
    const noCommits = await ensureTaskWorktree(empty, 'demo', path.join(empty, '.loopbox', 'wt')).catch((e: unknown) => e);
    expect(noCommits).toBeInstanceOf(LoopboxError);
    expect((noCommits as LoopboxError).message).toMatch(/has no commits/);
    expect((noCommits as LoopboxError).hint).toMatch(/first commit/);
    const repo = await gitdir({ 'src/a.ts': 'x\n' });
    for (const bad of ['../evil', 'Upper', '-x', 'a/b', 'a..b', 'x.lock', '']) {
      await expect(ensureTaskWorktree(repo, bad, path.join(repo, '.loopbox', 'wt'))).rejects.toThrow(LoopboxError);
    }
    await expect(ensureTaskWorktree(repo, 'demo', path.join(repo, 'src', 'wt'))).rejects.toThrow(/inside the tracked path src/);
  });
});

describe('attacks on host-side git', () => {
  it('runs no hook planted in .git/hooks or via core.hooksPath', async () => {
    const repo = await gitdir();
    const markers = await markerDir();
    const evilHooks = await tempDir('evil-hooks');
    const hooks = ['pre-commit', 'post-commit', 'post-checkout', 'reference-transaction', 'post-index-change', 'pre-auto-gc', 'post-rewrite'];
    for (const hook of hooks) {
      const script = await markerScript(markers, hook);
      const body = await readFile(script, 'utf8');
      for (const dir of [path.join(repo, '.git', 'hooks'), evilHooks]) {
        await writeFile(path.join(dir, hook), body);
        await chmod(path.join(dir, hook), 0o755);
      }
    }
    await sh(repo, 'config', 'core.hooksPath', evilHooks);

    const { dir } = await iteration(repo, async (d) => {
      await writeFile(path.join(d, 'new.txt'), 'hello\n');
      await writeFile(path.join(d, 'post-commit'), '#!/bin/sh\ntouch /tmp/never\n'); // a file named like a hook
    });
    await restorePaths(repo, dir, 'HEAD', ['new.txt', 'README.md']);
    expect(await readdir(markers)).toEqual([]);
    // Even porcelain through the hardened runner runs none (core.hooksPath is overridden).
    await git(['commit', '-q', '--allow-empty', '-m', 'hardened porcelain'], { cwd: repo });
    expect(await readdir(markers)).toEqual([]);

    // Control: the planted hooks are live for plain git.
    await sh(repo, 'commit', '-q', '--allow-empty', '-m', 'control');
    expect(await readdir(markers)).toEqual(expect.arrayContaining(['pre-commit', 'post-commit']));
  });

  it('never starts a core.fsmonitor program from the repo config', async () => {
    const repo = await gitdir({ 'a.txt': 'a\n' });
    const markers = await markerDir();
    await sh(repo, 'config', 'core.fsmonitor', await markerScript(markers, 'fsmonitor'));
    await sh(repo, 'config', 'core.untrackedCache', 'true');
    await iteration(repo, (d) => writeFile(path.join(d, 'a.txt'), 'changed\n'));
    await iteration(repo, (d) => writeFile(path.join(d, 'b.txt'), 'more\n'));
    await git(['status', '--porcelain'], { cwd: repo });
    expect(await readdir(markers)).toEqual([]);

    await sh(repo, 'status', '--porcelain');
    expect(await readdir(markers)).toEqual(['fsmonitor']);
  });

  it('applies no filter or textconv named by an agent-written .gitattributes, either way', async () => {
    const repo = await gitdir();
    const markers = await markerDir();
    await sh(repo, 'config', 'filter.evil.clean', await markerScript(markers, 'clean', true));
    await sh(repo, 'config', 'filter.evil.smudge', await markerScript(markers, 'smudge', true));
    await sh(repo, 'config', 'filter.evil.process', await markerScript(markers, 'process', true));
    await sh(repo, 'config', 'diff.evil.textconv', await markerScript(markers, 'textconv', true));
    const raw = Buffer.from('raw bytes\r\n$Id$\n\x00\xff', 'latin1');

    const first = await iteration(repo, async (d) => {
      await writeFile(path.join(d, '.gitattributes'), '* filter=evil diff=evil text eol=crlf ident\n');
      await writeFile(path.join(d, 'data.bin'), raw);
    });
    expect(first.snap.changed.map((c) => c.path)).toEqual(['.gitattributes', 'data.bin']);
    expect(await catBlob(repo, `${first.commit}:data.bin`)).toEqual(raw);
    // Resume the branch (which now carries the attributes) in a new worktree: no smudge either.
    await git(['worktree', 'remove', '--force', first.dir], { cwd: repo });
    const second = await iteration(repo, async (d) => {
      expect(await readFile(path.join(d, 'data.bin'))).toEqual(raw);
      await writeFile(path.join(d, 'more.bin'), raw);
    });
    expect(second.snap.changed.map((c) => c.path)).toEqual(['more.bin']);
    expect(await catBlob(repo, `${second.commit}:more.bin`)).toEqual(raw);
    expect(await readdir(markers)).toEqual([]);

    // Control: plain git in that worktree does run the agent-named filter.
    await execa('git', ['hash-object', 'data.bin'], { cwd: second.dir, env: userEnv, reject: false });
    expect((await readdir(markers)).length).toBeGreaterThan(0);
  });

  it('commits symlinks as links and never reads through them', async () => {
    const repo = await gitdir();
    const outside = await tempDir('outside');
    const token = `SECRET-${randomBytes(12).toString('hex')}`;
    await writeFile(path.join(outside, 'secret.txt'), `${token}\n`);
    await mkdir(path.join(outside, 'sub'));
    await writeFile(path.join(outside, 'sub', 'deep.txt'), `${token} deep\n`);

    const { snap, commit } = await iteration(repo, async (d) => {
      await symlink(path.join(outside, 'secret.txt'), path.join(d, 'leak'));
      await symlink(outside, path.join(d, 'evil'));
      await symlink('../../..', path.join(d, 'up'));
    });
    expect(snap.changed).toEqual([
      { path: 'evil', status: 'added', mode: '120000' },
      { path: 'leak', status: 'added', mode: '120000' },
      { path: 'up', status: 'added', mode: '120000' },
    ]);
    expect((await catBlob(repo, `${commit}:leak`)).toString()).toBe(path.join(outside, 'secret.txt'));
    expect((await catBlob(repo, `${commit}:evil`)).toString()).toBe(outside);
    expect(await sh(repo, 'ls-tree', '-r', '--name-only', commit)).not.toMatch(/evil\//);
    expect((await allObjects(repo)).includes(token)).toBe(false);
  });

  it('restores a protected path whose parent the agent swapped for a symlink, without touching the outside', async () => {
    const repo = await gitdir({
      'tests/a.test.ts': 'real test\n',
      'tests/unit/b.test.ts': 'real b\n',
      'loopbox.yaml': 'sandbox: {}\n',
      'src/x.ts': 'x\n',
    });
    const outside = await tempDir('outside');
    await writeFile(path.join(outside, 'a.test.ts'), 'OUTSIDE a\n');
    await writeFile(path.join(outside, 'target.yaml'), 'OUTSIDE yaml\n');
    const before = await snapshotOf(outside);

    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    await rm(path.join(wt.dir, 'tests'), { recursive: true });
    await symlink(outside, path.join(wt.dir, 'tests'));
    await unlink(path.join(wt.dir, 'loopbox.yaml'));
    await symlink(path.join(outside, 'target.yaml'), path.join(wt.dir, 'loopbox.yaml'));
    await writeFile(path.join(wt.dir, 'yarn.lock'), 'agent lock\n');
    await writeFile(path.join(wt.dir, 'src/x.ts'), 'agent change\n');

    const snap = await snapshotWorktree(repo, wt.dir);
    const patterns = ['tests/**', 'loopbox.yaml', '*.lock'];
    const violations = snap.changed.map((c) => c.path).filter((p) => matchesAny(p, patterns));
    expect(violations).toEqual(['loopbox.yaml', 'tests', 'tests/a.test.ts', 'tests/unit/b.test.ts', 'yarn.lock']);
    const result = await restorePaths(repo, wt.dir, wt.head, violations);
    expect(result.removed).toEqual(['yarn.lock']);

    expect(await snapshotOf(outside)).toEqual(before);
    expect((await lstat(path.join(wt.dir, 'tests'))).isDirectory()).toBe(true);
    expect(await readFile(path.join(wt.dir, 'tests/a.test.ts'), 'utf8')).toBe('real test\n');
    expect(await readFile(path.join(wt.dir, 'tests/unit/b.test.ts'), 'utf8')).toBe('real b\n');
    expect((await lstat(path.join(wt.dir, 'loopbox.yaml'))).isFile()).toBe(true);
    expect(await readFile(path.join(wt.dir, 'loopbox.yaml'), 'utf8')).toBe('sandbox: {}\n');
    const after = await snapshotWorktree(repo, wt.dir);
    expect(after.changed).toEqual([{ path: 'src/x.ts', status: 'modified', mode: '100644' }]);
  });

  it('restorePaths refuses paths that leave the worktree', async () => {
    const repo = await gitdir();
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', '.git/config', '']) {
      await expect(restorePaths(repo, wt.dir, wt.head, [bad])).rejects.toThrow(/Refusing to restore/);
    }
  });
});

describe('snapshotWorktree', () => {
  it('records deletions and the exec bit, ignores empty dirs, skips big and special files', async () => {
    const repo = await gitdir({ 'a.txt': 'a\n', 'run.sh': 'echo\n', 'big.bin': 'small in HEAD\n', 'docs/old.md': 'old\n' });
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    await rm(path.join(wt.dir, 'docs'), { recursive: true });
    await chmod(path.join(wt.dir, 'run.sh'), 0o755);
    await mkdir(path.join(wt.dir, 'empty', 'nested'), { recursive: true });
    await writeFile(path.join(wt.dir, 'big.bin'), Buffer.alloc(4096, 1));
    await writeFile(path.join(wt.dir, 'huge.bin'), Buffer.alloc(4096, 2));
    await writeFile(path.join(wt.dir, 'new.txt'), 'new\n');
    await execa('mkfifo', [path.join(wt.dir, 'pipe')]);
    await mkdir(path.join(wt.dir, 'sub', '.GIT'), { recursive: true });
    await writeFile(path.join(wt.dir, 'sub', '.GIT', 'config'), '[core]\n');

    const snap = await snapshotWorktree(repo, wt.dir, { maxFileBytes: 1024 });
    expect(snap.changed).toEqual([
      { path: 'docs/old.md', status: 'deleted', mode: '100644' },
      { path: 'new.txt', status: 'added', mode: '100644' },
      { path: 'run.sh', status: 'modified', mode: '100755' },
    ]);
    expect(snap.skipped.map((s) => s.path)).toEqual(['big.bin', 'huge.bin', 'pipe', 'sub/.GIT']);
    expect(snap.skipped.find((s) => s.path === 'pipe')?.reason).toMatch(/fifo/);
    expect(snap.skipped.find((s) => s.path === 'big.bin')?.reason).toMatch(/larger than 1024/);
    // A skipped file keeps its base version in the tree.
    expect(await sh(repo, 'ls-tree', '--name-only', snap.tree)).toContain('big.bin');
    expect(await sh(repo, 'ls-tree', '--name-only', snap.tree)).not.toContain('huge.bin');
    // No progress, same tree.
    expect((await snapshotWorktree(repo, wt.dir, { maxFileBytes: 1024 })).tree).toBe(snap.tree);
  });

  it('gives the base tree for an untouched worktree and refuses too many files', async () => {
    const repo = await gitdir({ 'a.txt': 'a\n', 'b/c.txt': 'c\n' });
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    const snap = await snapshotWorktree(repo, wt.dir);
    expect(snap.tree).toBe(await sh(repo, 'rev-parse', 'HEAD^{tree}'));
    expect(snap.changed).toEqual([]);
    await expect(snapshotWorktree(repo, wt.dir, { maxFiles: 1 })).rejects.toThrow(/more than 1 files/);
  });

  it('keepBase: the tree takes the base entry of a protected path; its new content never becomes a git object', async () => {
    const repo = await gitdir({ 'test/a.test.js': 'real test\n', 'src.js': 'x\n' });
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(await tempDir('wt'), 'demo'));
    await writeFile(path.join(wt.dir, 'test', 'a.test.js'), 'neutered test: a marker 7f3c\n');
    await writeFile(path.join(wt.dir, 'test', 'new.test.js'), 'planted test: a marker 7f3c\n');
    await writeFile(path.join(wt.dir, 'src.js'), 'y\n');
    const snap = await snapshotWorktree(repo, wt.dir, { keepBase: (p) => p.startsWith('test/') });
    expect(snap.violations).toEqual(['test/a.test.js', 'test/new.test.js']);
    expect(snap.changed.map((c) => c.path)).toEqual(['src.js']);
    expect((await catBlob(repo, `${snap.tree}:test/a.test.js`)).toString()).toBe('real test');
    expect((await allObjects(repo)).includes(Buffer.from('a marker 7f3c'))).toBe(false);
  });

  it('refuses a directory that is not a worktree of the repo', async () => {
    const repo = await gitdir();
    const other = await tempDir('other');
    await expect(snapshotWorktree(repo, other)).rejects.toThrow(/is not a task worktree/);
    await expect(snapshotWorktree(repo, repo)).rejects.toThrow(/is not a task worktree/);
  });
});

describe('commitSnapshot and syncWorktreeIndex', () => {
  it('commits with the given author, moves the branch by compare-and-swap, and leaves the worktree clean', async () => {
    const repo = await gitdir({ 'a.txt': 'a\n' });
    const wt = await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    await writeFile(path.join(wt.dir, 'a.txt'), 'changed\n');
    await writeFile(path.join(wt.dir, 'b.txt'), 'b\n');
    const snap = await snapshotWorktree(repo, wt.dir);
    const author = { name: 'loopbox', email: 'loopbox@localhost', date: '2026-01-02T03:04:05Z' };
    const commit = await commitSnapshot(repo, wt.branch, snap.tree, wt.head, 'loopbox: iteration 1\n\nbody', author);
    expect(await sh(repo, 'rev-parse', 'refs/heads/loopbox/demo')).toBe(commit);
    expect(await sh(repo, 'log', '-1', '--format=%an <%ae>|%cn|%aI|%s|%T|%P', commit)).toBe(
      `loopbox <loopbox@localhost>|loopbox|2026-01-02T03:04:05+00:00|loopbox: iteration 1|${snap.tree}|${wt.head}`,
    );
    // Stale parent: the compare-and-swap refuses to move the branch.
    const stale = await commitSnapshot(repo, wt.branch, snap.tree, wt.head, 'again').catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(GitError);
    expect((stale as GitError).hint).toMatch(/no longer points at/);
    expect(await sh(repo, 'rev-parse', 'refs/heads/loopbox/demo')).toBe(commit);

    expect(await sh(wt.dir, 'status', '--porcelain')).not.toBe('');
    expect(await syncWorktreeIndex(repo, wt.dir)).toBe(commit);
    expect(await sh(wt.dir, 'status', '--porcelain')).toBe('');
    // An unchanged tree may still be committed; the caller decides.
    const same = await snapshotWorktree(repo, wt.dir);
    expect(same.tree).toBe(snap.tree);
    expect(same.changed).toEqual([]);
    expect(await commitSnapshot(repo, wt.branch, same.tree, commit, 'no change')).toMatch(/^[0-9a-f]{40}$/);
  });

  it('isDirtyRepo sees tracked changes in the user repo only', async () => {
    const repo = await gitdir({ 'a.txt': 'a\n' });
    await ensureTaskWorktree(repo, 'demo', path.join(repo, '.loopbox', 'worktrees', 'demo'));
    await writeFile(path.join(repo, 'untracked.txt'), 'u\n');
    expect(await isDirtyRepo(repo)).toBe(false);
    await writeFile(path.join(repo, 'a.txt'), 'changed\n');
    expect(await isDirtyRepo(repo)).toBe(true);
  });
});

describe('protected-path patterns', () => {
  it('matches like gitignore, erring towards protecting', () => {
    expect(matchesAny('tests/a/b.ts', ['tests/**'])).toBe(true);
    expect(matchesAny('tests', ['tests/**'])).toBe(true);
    expect(matchesAny('tests2/a.ts', ['tests/**'])).toBe(false);
    expect(matchesAny('src/tests/a.ts', ['tests/**'])).toBe(false);
    expect(matchesAny('loopbox.yaml', ['loopbox.yaml'])).toBe(true);
    expect(matchesAny('sub/loopbox.yaml', ['loopbox.yaml'])).toBe(true);
    expect(matchesAny('loopbox.yaml', ['/loopbox.yaml'])).toBe(true);
    expect(matchesAny('sub/loopbox.yaml', ['/loopbox.yaml'])).toBe(false);
    expect(matchesAny('yarn.lock', ['*.lock'])).toBe(true);
    expect(matchesAny('a/b/Cargo.lock', ['*.lock'])).toBe(true);
    expect(matchesAny('a/lock', ['*.lock'])).toBe(false);
    expect(matchesAny('a/b/c.snap', ['**/*.snap'])).toBe(true);
    expect(matchesAny('c.snap', ['**/*.snap'])).toBe(true);
    expect(matchesAny('x/fixtures/y/z', ['x/**/y/*'])).toBe(true);
    expect(matchesAny('x/y/z', ['x/**/y/*'])).toBe(true);
    expect(matchesAny('x/fixtures/y/z', ['x/**/z'])).toBe(true);
    expect(matchesAny('tasks/a.md', ['tasks/*.md'])).toBe(true);
    expect(matchesAny('tasks/sub/a.md', ['tasks/*.md'])).toBe(false);
    expect(matchesAny('a1.txt', ['a[0-9].txt'])).toBe(true);
    expect(matchesAny('ab.txt', ['a[!0-9].txt'])).toBe(true);
    expect(matchesAny('a.b+c', ['a.b+c'])).toBe(true);
    expect(matchesAny('axb+c', ['a.b+c'])).toBe(false);
  });
});

describe('safe-fs', () => {
  it('keeps using the directory it opened when that directory is swapped for a symlink (TOCTOU)', async () => {
    const base = await tempDir('toctou');
    const outside = await tempDir('outside');
    await writeFile(path.join(outside, 'f'), 'OUTSIDE\n');
    await mkdir(path.join(base, 'sub'));
    await writeFile(path.join(base, 'sub', 'f'), 'inside\n');
    const root = await DirHandle.open(base);
    const sub = (await root.openDir('sub'))!;
    try {
      await rename(path.join(base, 'sub'), path.join(base, 'sub-old'));
      await symlink(outside, path.join(base, 'sub'));
      const read = await sub.readFile('f', 1024);
      expect(read).toMatchObject({ content: Buffer.from('inside\n') });
      await sub.createFile('g', Buffer.from('written\n'), 0o644);
      expect(await readdir(outside)).toEqual(['f']);
      // And the swapped-in symlink itself is never opened as a directory or read as a file.
      expect(await root.openDir('sub')).toBeUndefined();
      await symlink(path.join(outside, 'f'), path.join(base, 'link'));
      expect(await root.readFile('link', 1024)).toBeUndefined();
    } finally {
      await sub.close();
      await root.close();
    }
  });
});
