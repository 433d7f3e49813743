// The run record around a sandbox run outside a loop (runStandaloneSandbox): recorded before any
// container starts, marked ended whatever happens, and a run id that could leave the runs
// directory refused before anything is written. The sandbox itself is tested against real Docker
// (test/docker/sandbox.test.ts); here the Docker client only answers that the image is missing.
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DockerClient } from '../../src/docker/client.js';
import { runStandaloneSandbox } from '../../src/sandbox/standalone.js';

let root: string;
let env: NodeJS.ProcessEnv;
const noImages = { findImage: () => Promise.resolve(undefined) } as unknown as DockerClient;
const base = { cmd: ['true'], limits: { memoryBytes: 1024 ** 3, cpus: 1, pids: 64 } };

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'lbx-standalone-'));
  env = { LOOPBOX_STATE_DIR: root };
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('runStandaloneSandbox', () => {
  it('records the run (kind sandbox, this process) before the sandbox starts and marks it ended when the sandbox fails', async () => {
    const started: string[] = [];
    const before = Date.now();
    await expect(runStandaloneSandbox(noImages, { ...base, runId: 'sb-1', task: 'probe', stateEnv: env, onStart: (id) => started.push(id) })).rejects.toThrow(/is not built/);
    expect(started).toEqual(['sb-1']);
    const record = JSON.parse(await readFile(path.join(root, 'runs', 'sb-1', 'run.json'), 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({ runId: 'sb-1', kind: 'sandbox', task: 'probe', pid: process.pid });
    expect(Date.parse(String(record.endedAt))).toBeGreaterThanOrEqual(before - 1000);
  });

  it('refuses a run id or task name that is not a safe name, before anything is written', async () => {
    await expect(runStandaloneSandbox(noImages, { ...base, runId: '../escape', stateEnv: env })).rejects.toThrow(/Run id "..\/escape" must be lowercase/);
    await expect(runStandaloneSandbox(noImages, { ...base, runId: 'sb-2', task: 'a/b', stateEnv: env })).rejects.toThrow(/Task name "a\/b" must be lowercase/);
    expect(await readdir(path.join(root, 'runs'))).toEqual(['sb-1']);
    expect(await readdir(root)).toEqual(['runs']);
  });
});
