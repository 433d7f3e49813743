// From `loopbox init` in a real project to a first real loop, without writing a Dockerfile:
// init detects the test setup, `images build --toolchain` builds the verify image it names, and
// `loopbox run --repo DIR tasks/fix.md` (a path relative to --repo) ends `done` with a verified
// commit, for a Node project with `npm test` and a Python project with pytest.
import { mkdtemp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { parse, stringify } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { VERIFY_PROFILES } from '../../src/config/init.js';
import { imageRef } from '../../src/images/catalog.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { cli, parseJsonLines, useTestRun } from './helpers.js';

const PROJECTS = {
  node: {
    'package.json': `${JSON.stringify({ name: 'calc', private: true, scripts: { test: 'node --test' } }, null, 2)}\n`,
    'calc.js': 'exports.add = (a, b) => a - b;\n',
    'test/calc.test.js': "const test = require('node:test');\nconst assert = require('node:assert');\nconst { add } = require('../calc.js');\ntest('add', () => assert.strictEqual(add(2, 3), 5));\n",
  },
  python: {
    'pyproject.toml': '[project]\nname = "calc"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\npythonpath = ["."]\n',
    'calc.py': 'def add(a, b):\n    return a - b\n',
    'tests/test_calc.py': 'from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n',
  },
} as const;

async function gitRepo(files: Record<string, string>): Promise<string> {
  const repo = await mkdtemp(path.join(tmpdir(), 'lbx-tc-'));
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(repo, name)), { recursive: true });
    await writeFile(path.join(repo, name), text);
  }
  const git = (args: string[]) => execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'commit.gpgSign=false', ...args], { cwd: repo });
  await git(['init', '-q', '-b', 'main']);
  await git(['add', '-A']);
  await git(['commit', '-qm', 'a project with a bug']);
  return repo;
}

describe('init → images build --toolchain → run (real Docker)', () => {
  const { track } = useTestRun('toolchain');

  beforeAll(async () => {
    const res = await cli(['images', 'build', '--only', 'agent', '--toolchain', 'node', '--toolchain', 'python'], { timeoutMs: 900_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stdout).toMatch(/loopbox\/verify-node:\S+\s+(built|unchanged)/);
    expect(res.stdout).toMatch(/loopbox\/verify-python:\S+\s+(built|unchanged)/);
  }, 900_000);

  it.each(['node', 'python'] as const)('%s project: init proposes the verify command and image, and a loop ends done', async (toolchain) => {
    const repo = await gitRepo(PROJECTS[toolchain]);
    track({ repo, config: path.join(repo, 'loopbox.yaml') });

    const init = await cli(['init', '--dir', repo]);
    expect(init.exitCode, init.all).toBe(0);
    expect(init.stdout).toContain(`detected ${toolchain}`);
    expect(init.stdout).toContain(`loopbox images build --toolchain ${toolchain}`);
    const config = parse(await readFile(path.join(repo, 'loopbox.yaml'), 'utf8')) as Record<string, Record<string, unknown>>;
    expect(config.verify?.image).toBe(imageRef(`verify-${toolchain}`));
    expect(config.verify?.command).toEqual(VERIFY_PROFILES[toolchain].command);
    // pytest writes a report loopbox reads (test accounting); `npm test` says nothing of its runner.
    expect(config.verify?.report).toBe(toolchain === 'python' ? 'pytest' : undefined);

    // What a user edits next: the agent (here a scripted one that fixes the bug) and the task.
    const source = toolchain === 'node' ? 'calc.js' : 'calc.py';
    config.agent = { type: 'command', command: ['bash', '-c', `sed -i 's/a - b/a + b/' ${source}`], timeout: '60s' };
    config.sandbox = { memory: '1g', cpus: 1, pids: 256 };
    config.loop = { maxIterations: 3, noProgress: 2 };
    await writeFile(path.join(repo, 'loopbox.yaml'), stringify(config));
    await writeFile(path.join(repo, 'tasks', 'fix.md'), '# Task: fix add\n\n## Goal\nadd(a, b) returns the sum.\n');

    // The task path is relative to --repo, not to this process's directory.
    expect(process.cwd()).not.toBe(repo);
    const res = await cli(['run', '--repo', repo, '--json', 'tasks/fix.md'], { timeoutMs: 300_000 });
    const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: { endState: string; verifiedCommit: string | null } }>(res.stdout);
    const end = events.find((e) => e.type === 'loop-end')?.summary;
    expect(res.exitCode, res.all).toBe(0);
    expect(end?.endState).toBe('done');
    expect(end?.verifiedCommit).toMatch(/^[0-9a-f]{40}$/);
    const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
    expect(iterations.map((i) => i.verify?.passed)).toEqual([true]);
    const { stdout } = await execa('git', ['show', `loopbox/fix:${source}`], { cwd: repo });
    expect(stdout).toContain('a + b');
    const { stdout: message } = await execa('git', ['log', '-1', '--format=%B', 'loopbox/fix'], { cwd: repo });
    expect(message).toContain(toolchain === 'python' ? 'Loopbox-Tests: 1 passed, 0 failed, 0 skipped' : 'Loopbox-Verify: exit-code-only');
  }, 400_000);

  it('the default agent image cannot run the proposed command (why init names another image)', async () => {
    const res = await cli(['sandbox', 'run', '--', 'bash', '-c', 'command -v npm python3 go cargo; echo done']);
    expect(res.stdout.trim()).toBe('done');
  });
});
