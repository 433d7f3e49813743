// Verification stays clean with a per-run verify base (issue 13): each verify container starts
// from exactly the tree it is given, and nothing a previous verify wrote survives into the next.
// A verify command that lists /workspace (types, link targets, one file's content) and then
// writes everywhere it can: into /workspace, over a tracked file, into /tmp, $HOME, the
// container's root file system and the read-only base. The next verify, on the same base, must
// see exactly its own tree. Real Docker, real git.
import { mkdtemp, rm, writeFile, mkdir, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { imageRef } from '../../src/images/catalog.js';
import { runVerify, type VerifyResult } from '../../src/verify/verify.js';
import { docker, remaining, testRunId } from './helpers.js';

const env = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
const runId = testRunId('vbase');
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  expect(await remaining(runId)).toEqual([]);
});

// Lists the tree, reports any planted file it can see, then plants files everywhere it can.
const PROBE = `cd /workspace
echo "LIST"; find . -mindepth 1 -printf '%y %p %l\\n' | LC_ALL=C sort
echo "A=$(cat a.txt 2>/dev/null)"
for f in /workspace/planted /workspace/d/planted /tmp/planted /tmp/home/planted /planted /loopbox/base/planted; do
  [ -e "$f" ] && echo "SEEN $f"
done
echo "END"
echo tampered > a.txt
mkdir -p d /tmp/home; echo x > /workspace/planted; echo x > d/planted; echo x > /tmp/planted; echo x > /tmp/home/planted
echo x > /planted 2>/dev/null
echo x > /loopbox/base/planted 2>/dev/null && echo "BASE WRITABLE"
[ "$(cat a.txt)" = tampered ] && [ -e /workspace/planted ] && echo "WORKSPACE WRITABLE"
exit 0`;

function listing(result: VerifyResult): { list: string[]; a: string; seen: string[]; baseWritable: boolean; workspaceWritable: boolean } {
  const out = result.outputTail;
  const body = out.slice(out.indexOf('LIST\n') + 5, out.indexOf('END\n'));
  const lines = body.split('\n').filter(Boolean);
  return {
    list: lines.filter((l) => !l.startsWith('A=') && !l.startsWith('SEEN ')).map((l) => l.trimEnd()),
    a: lines.find((l) => l.startsWith('A='))!.slice(2),
    seen: lines.filter((l) => l.startsWith('SEEN ')),
    baseWritable: out.includes('BASE WRITABLE'),
    // The command may write its build outputs next to the tree.
    workspaceWritable: out.includes('WORKSPACE WRITABLE'),
  };
}

describe('verify base: each verify starts from exactly the committed tree', () => {
  it('sees tree changes exactly (deletions, symlinks) and nothing a previous verify wrote', async () => {
    const repo = await mkdtemp(path.join(tmpdir(), 'lbx-vbase-repo-'));
    const runDir = await mkdtemp(path.join(tmpdir(), 'lbx-vbase-run-'));
    dirs.push(repo, runDir);
    const g = (...args: string[]): Promise<string> => execa('git', args, { cwd: repo, env }).then((r) => r.stdout);
    await g('init', '-q', '-b', 'main');
    await writeFile(path.join(repo, 'a.txt'), 'one');
    await mkdir(path.join(repo, 'd'));
    await writeFile(path.join(repo, 'd', 'x.txt'), 'x');
    await symlink('a.txt', path.join(repo, 'link'));
    await g('add', '-A');
    const tree1 = await g('write-tree');
    // Tree 2: d/x.txt deleted (d goes), the symlink becomes a directory, a.txt changes, a new link.
    await g('rm', '-qf', 'd/x.txt', 'link');
    await mkdir(path.join(repo, 'link'));
    await writeFile(path.join(repo, 'link', 'in.txt'), 'in');
    await writeFile(path.join(repo, 'a.txt'), 'two');
    await symlink('../etc/passwd', path.join(repo, 'up'));
    await g('add', '-A');
    const tree2 = await g('write-tree');

    const baseDir = path.join(runDir, 'verify-base');
    const verify = (tree: string, iteration: number): Promise<VerifyResult> =>
      runVerify(docker, {
        runId,
        task: 'vbase',
        iteration,
        image: imageRef('agent'),
        command: ['sh', '-c', PROBE],
        repo,
        tree,
        baseDir,
        timeoutMs: 60_000,
        maxCopyBytes: 1024 ** 2,
        limits: { memoryBytes: 256 * 1024 ** 2, cpus: 1, pids: 64 },
      });

    const first = await verify(tree1, 1);
    expect(first.exitCode, first.outputTail).toBe(0);
    expect(listing(first)).toEqual({ list: ['d ./d', 'f ./a.txt', 'f ./d/x.txt', 'l ./link a.txt'], a: 'one', seen: [], baseWritable: false, workspaceWritable: true });

    const second = await verify(tree2, 2);
    expect(second.exitCode, second.outputTail).toBe(0);
    expect(listing(second)).toEqual({ list: ['d ./link', 'f ./a.txt', 'f ./link/in.txt', 'l ./up ../etc/passwd'], a: 'two', seen: [], baseWritable: false, workspaceWritable: true });

    // The same tree again after a verify that tampered with it: the committed content, not "tampered".
    const third = await verify(tree2, 3);
    expect(listing(third)).toEqual(listing(second));

    // Back to the first tree: exactly it again.
    const fourth = await verify(tree1, 4);
    expect(listing(fourth)).toEqual(listing(first));
  });

  it('fails the verify, without running the command, when the tree is over verify.maxCopy', async () => {
    const repo = await mkdtemp(path.join(tmpdir(), 'lbx-vbase-big-'));
    dirs.push(repo);
    const g = (...args: string[]): Promise<string> => execa('git', args, { cwd: repo, env }).then((r) => r.stdout);
    await g('init', '-q', '-b', 'main');
    await writeFile(path.join(repo, 'big.bin'), Buffer.alloc(64 * 1024, 1));
    await g('add', '-A');
    const result = await runVerify(docker, {
      runId,
      task: 'vbase',
      iteration: 9,
      image: imageRef('agent'),
      command: ['true'],
      repo,
      tree: await g('write-tree'),
      timeoutMs: 60_000,
      maxCopyBytes: 1024,
      limits: { memoryBytes: 256 * 1024 ** 2, cpus: 1, pids: 64 },
    });
    expect(result.passed).toBe(false);
    expect(result.outputTail).toMatch(/verify\.maxCopy/);
  });
});
