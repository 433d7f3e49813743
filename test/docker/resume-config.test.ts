// `loopbox run --resume` typed in another directory goes on with the config recorded with the
// run, not that directory's loopbox.yaml (issue 20 item 2).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { LABELS, resourceLabels } from '../../src/docker/labels.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { cliPath, docker, makeLoopRepo, parseJsonLines, useTestRun, waitFor } from './helpers.js';

// Agents of this checkout's state dir only: other checkouts test on the same engine.
const ownStateDir = `${LABELS.stateDir}=${resourceLabels({ runId: 'x', role: 'test' })[LABELS.stateDir]}`;

describe('run --resume from another directory (real Docker, git)', () => {
  const { track } = useTestRun('resume-cfg');

  it('uses the config recorded with the run, not the loopbox.yaml of the directory it is typed in', async () => {
    // The first agent hangs (the run is killed under it); the resumed run's agent, which finds
    // the marker the first one left in the worktree, fixes add().
    const agent = `if [ ! -f hung.txt ]; then touch hung.txt; sleep 300; fi; sed -i 's/return a - b;/return a + b;/' calc.js`;
    const repo = track(
      await makeLoopRepo({
        agent: { type: 'command', command: ['bash', '-c', agent], timeout: '6m' },
        verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
        loop: { maxIterations: 3, noProgress: 5 },
        sandbox: { memory: '512m', cpus: 0.5, pids: 128 },
      }),
    );
    const child = execa('node', [cliPath, '--config', repo.config, 'run', '--repo', repo.repo, '--json', path.join(repo.repo, 'tasks', 'fix-add.md')], { reject: false, all: true });
    const agentBox = await waitFor('the first agent', async () => (await docker.listContainers(['loopbox.role=agent', 'loopbox.task=fix-add', 'loopbox.iteration=1', ownStateDir]))[0], 120_000);
    const runId = agentBox.labels['loopbox.run-id']!;
    await new Promise((r) => setTimeout(r, 2000));
    child.kill('SIGKILL');
    await child;

    // Another directory whose loopbox.yaml would make the loop fail: a verify command that
    // always fails and a cap of one iteration. With it the resumed run would end `capped`.
    const elsewhere = await mkdtemp(path.join(tmpdir(), 'lbx-elsewhere-'));
    try {
      await writeFile(path.join(elsewhere, 'loopbox.yaml'), stringify({ verify: { command: ['false'] }, loop: { maxIterations: 1 } }));
      const resumed = await execa('node', [cliPath, 'run', '--json', '--resume', runId], { cwd: elsewhere, reject: false, all: true, timeout: 240_000 });
      const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: { endState: string } }>(resumed.stdout);
      expect(events.find((e) => e.type === 'loop-end')?.summary?.endState, resumed.all).toBe('done');
      expect(events.filter((e) => e.type === 'iteration-end').map((e) => e.record!.verified)).toEqual([true]);
      expect(resumed.exitCode).toBe(0);
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  }, 420_000);
});
