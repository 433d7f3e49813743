// The Docker engine killed and started again mid-iteration (issue 20 item 2), for real, on a
// second engine of the test's own (second-engine.ts) so the shared one is never touched: the
// loop waits for the engine, records the interrupted iteration as void, cleans up and ends
// `done`. The engine runs in its own network namespace, so the loop uses `model.endpoint`
// (an address nothing listens on) and a command agent that never calls the model: the model
// server is not what this test is about, and nothing on that engine can reach the shared one.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { runDir } from '../../src/common/paths.js';
import { imageRef } from '../../src/images/catalog.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { type SecondEngine, secondEngineUnavailable, startSecondEngine } from './second-engine.js';
import { cliPath, makeLoopRepo, parseJsonLines, useTestRun, waitFor } from './helpers.js';

describe('a Docker engine restarted mid-loop (a second, private engine)', () => {
  const { track } = useTestRun('engine');
  let engine: SecondEngine | undefined;
  afterAll(async () => {
    await engine?.cleanup();
  });

  it('the interrupted iteration is void, the loop waits for the engine and ends done', async (ctx) => {
    const why = await secondEngineUnavailable();
    if (why) ctx.skip(why);
    engine = await startSecondEngine();
    await engine.loadImages([imageRef('sentry'), imageRef('agent')]);
    // Iteration 1 sleeps (the engine is killed under it); any later one fixes add().
    const agent = `if [ "$LOOPBOX_ITERATION" = 1 ]; then sleep 300; fi; sed -i 's/return a - b;/return a + b;/' calc.js`;
    const repo = track(
      await makeLoopRepo({
        agent: { type: 'command', command: ['bash', '-c', agent], timeout: '6m' },
        verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
        // Two iterations that count: a void one counted would make this `capped`.
        loop: { maxIterations: 1, noProgress: 5, engineWait: '90s' },
        model: { endpoint: 'http://127.0.0.1:9/v1' },
        sandbox: { memory: '512m', cpus: 0.5, pids: 128 },
      }),
    );
    const run = execa('node', [cliPath, '--config', repo.config, 'run', '--repo', repo.repo, '--json', path.join(repo.repo, 'tasks', 'fix-add.md')], {
      reject: false,
      all: true,
      env: { DOCKER_HOST: engine.host },
      timeout: 480_000,
    });
    const e = engine;
    const agentId = await waitFor('the agent on the second engine', async () => (await e.docker(['ps', '-q', '--filter', 'label=loopbox.role=agent'])).trim() || undefined, 180_000);
    await e.kill();
    await new Promise((r) => setTimeout(r, 3000));
    await e.start();
    const res = await run;
    const events = parseJsonLines<{ type: string; message?: string; record?: IterationRecord; summary?: { runId: string; endState: string; iterations: number } }>(res.stdout);
    const end = events.find((x) => x.type === 'loop-end')?.summary;
    expect(end?.endState, `${res.all}\n${await e.log()}`).toBe('done');
    expect(res.exitCode).toBe(0);
    const notices = events.filter((x) => x.type === 'notice').map((x) => x.message ?? '');
    expect(notices.some((m) => /Docker engine went away during iteration 1.*waiting up to 90 s/.test(m)), notices.join('\n')).toBe(true);
    expect(notices.some((m) => /iteration 1 is void/.test(m))).toBe(true);
    const records = parseJsonLines<IterationRecord>(await readFile(path.join(runDir(end!.runId), 'iterations.jsonl'), 'utf8'));
    expect(records.map((r) => [r.iteration, r.void === undefined ? 'counted' : 'void', r.verified])).toEqual([
      [1, 'void', false],
      [2, 'counted', true],
    ]);
    expect(records[0]!.void).toMatch(/Docker engine went away/);
    // The dead iteration's agent and sentry were cleaned up, and the run left nothing.
    expect(await e.docker(['ps', '-aq', '--filter', `id=${agentId}`])).toBe('');
    expect(await e.docker(['ps', '-aq', '--filter', `label=loopbox.run-id=${end!.runId}`])).toBe('');
  }, 600_000);
});
