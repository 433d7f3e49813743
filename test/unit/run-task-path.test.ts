// `loopbox run --repo DIR tasks/x.md` resolves the task path against DIR (git -C-like), through
// the real commander program; the error names the path that was tried.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CliContext } from '../../src/cli/context.js';
import { buildProgram } from '../../src/cli/program.js';

async function runCli(args: string[]): Promise<{ error: unknown; stderr: string }> {
  const program = buildProgram(new CliContext(new AbortController().signal), { exitCode: 0 });
  program.exitOverride();
  const chunks: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => {
    chunks.push(String(c));
    return true;
  });
  try {
    await program.parseAsync(['node', 'loopbox', ...args]);
    return { error: undefined, stderr: chunks.join('') };
  } catch (error) {
    return { error, stderr: chunks.join('') };
  } finally {
    spy.mockRestore();
  }
}

describe('loopbox run: task paths relative to --repo', () => {
  let root: string;
  let savedState: string | undefined;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'lbx-taskpath-'));
    savedState = process.env.LOOPBOX_STATE_DIR;
    process.env.LOOPBOX_STATE_DIR = path.join(root, 'state');
  });
  afterEach(async () => {
    if (savedState === undefined) delete process.env.LOOPBOX_STATE_DIR;
    else process.env.LOOPBOX_STATE_DIR = savedState;
    await rm(root, { recursive: true, force: true });
  });

  it('finds tasks/fix.md inside --repo when the current directory is elsewhere', async () => {
    const repo = path.join(root, 'app');
    await mkdir(path.join(repo, 'tasks'), { recursive: true });
    await writeFile(path.join(repo, 'tasks', 'fix.md'), '# Task: fix\n');
    await writeFile(path.join(repo, 'loopbox.yaml'), 'verify:\n  command: ["true"]\n');
    // The kill switch stops the run right after the task files were read: no Docker needed,
    // and reaching it proves the task file was found.
    await mkdir(path.join(root, 'state'), { recursive: true });
    await writeFile(path.join(root, 'state', 'STOP'), '');
    expect(path.resolve('tasks/fix.md')).not.toBe(path.join(repo, 'tasks', 'fix.md'));
    const res = await runCli(['run', '--repo', repo, 'tasks/fix.md']);
    expect(String(res.error)).toMatch(/kill switch/);
    expect(String(res.error)).not.toMatch(/Cannot read task file/);
  });

  it('names the path it tried, under --repo, when the task file is missing', async () => {
    const repo = path.join(root, 'app');
    await mkdir(repo, { recursive: true });
    const res = await runCli(['run', '--repo', repo, 'tasks/missing.md']);
    const error = res.error as { message: string; hint?: string; exitCode?: number };
    expect(error.message).toContain(`Cannot read task file ${path.join(repo, 'tasks', 'missing.md')}`);
    expect(error.hint).toContain(`resolved against --repo (${repo})`);
    expect(error.exitCode).toBe(2);
  });

  it('keeps absolute task paths as they are', async () => {
    const repo = path.join(root, 'app');
    await mkdir(repo, { recursive: true });
    const elsewhere = path.join(root, 'elsewhere.md');
    const res = await runCli(['run', '--repo', repo, elsewhere]);
    expect((res.error as Error).message).toContain(`Cannot read task file ${elsewhere}`);
  });
});
