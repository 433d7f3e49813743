// The Docker engine going away mid-iteration (issue 20 item 2): which errors mean that, the
// bounded wait, the void record; and the config a resumed run goes with.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DockerUnavailableError, LoopboxError } from '../../src/common/errors.js';
import { parseConfig } from '../../src/config/load.js';
import type Docker from 'dockerode';
import type { DockerClient } from '../../src/docker/client.js';
import { ENGINE_WATCH_MS, startAndWait } from '../../src/docker/containers.js';
import { DockerApiError } from '../../src/docker/errors.js';
import { isEngineLoss, voidRecord, waitForEngine } from '../../src/loop/engine.js';
import { recordedConfig } from '../../src/loop/state.js';
import { iterationResult } from '../../src/triggers/metrics.js';

const hangUp = (): Error => Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });

describe('engine loss', () => {
  it('is a hang-up or refusal of the engine socket, however deep in the causes; not an API answer', () => {
    expect(isEngineLoss(new DockerUnavailableError(new Error('connect ENOENT /run/x/docker.sock')))).toBe(true);
    expect(isEngineLoss(new DockerApiError('waiting for container abc', hangUp()))).toBe(true);
    expect(isEngineLoss(new LoopboxError('agent failed', { cause: new DockerApiError('x', Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })) }))).toBe(true);
    expect(isEngineLoss(new DockerApiError('creating container', Object.assign(new Error('(HTTP code 409) conflict'), { statusCode: 409 })))).toBe(false);
    expect(isEngineLoss(new Error('verify command not found'))).toBe(false);
    // A cause cycle does not hang the check.
    const a = new Error('a') as Error & { cause?: unknown };
    a.cause = a;
    expect(isEngineLoss(a)).toBe(false);
  });

  it('attack: a file error (ENOENT) or a message that merely contains "socket hang up" is not an engine loss (a void iteration skips every brake)', async () => {
    // A void iteration is not counted and the brakes are not asked: an error that recurs each
    // iteration and passed for an engine loss would loop for ever. A missing file (the worktree
    // or a report gone) is a file error, and a git error quoting a file the agent named is text.
    const missing = await readFile(path.join(tmpdir(), 'lbx-engine-no-such-dir', 'x')).catch((e: unknown) => e);
    expect((missing as { code?: string }).code).toBe('ENOENT');
    expect(isEngineLoss(missing)).toBe(false);
    expect(isEngineLoss(new LoopboxError('snapshot of the worktree failed', { cause: missing }))).toBe(false);
    expect(isEngineLoss(new LoopboxError("git update-index failed\n  stderr:\n    error: unable to index file 'socket hang up'"))).toBe(false);
    expect(isEngineLoss(new Error("restore failed: connect ENOENT /tmp/agent/docker.sock' (a file name)"))).toBe(false);
    // The engine's own socket errors still are.
    expect(isEngineLoss(Object.assign(new Error('connect ENOENT /var/run/docker.sock'), { code: 'ENOENT', syscall: 'connect', address: '/var/run/docker.sock' }))).toBe(true);
    expect(isEngineLoss(new Error('socket hang up'))).toBe(true);
  });

  it('waits until the engine answers, and no longer than the bound', async () => {
    let pings = 0;
    const back = { ping: () => (++pings < 3 ? Promise.reject(new Error('down')) : Promise.resolve()) } as unknown as DockerClient;
    expect(await waitForEngine(back, 5_000, new AbortController().signal, 10)).toBe(true);
    expect(pings).toBe(3);
    const never = { ping: () => Promise.reject(new Error('down')) } as unknown as DockerClient;
    const t0 = Date.now();
    expect(await waitForEngine(never, 200, new AbortController().signal, 20)).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const t1 = Date.now();
    expect(await waitForEngine(never, 10_000, stop.signal, 1000)).toBe(false);
    expect(Date.now() - t1).toBeLessThan(2000);
  });

  it('a void record: the last counted tree, nothing verified or committed, why, and the metrics call it void', () => {
    const r = voidRecord(3, new Date(Date.now() - 5000), 'tree-2', new DockerUnavailableError(new Error('connect ENOENT')), 4200);
    expect(r).toMatchObject({ iteration: 3, tree: 'tree-2', verify: null, commit: null, verified: false, tokens: 0, modelDown: false, agent: { exitCode: -1 } });
    expect(r.void).toMatch(/Docker engine went away.*after 4 s/);
    expect(iterationResult(r)).toBe('void');
  });
});

describe('recordedConfig', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('takes the latest resumed config, else config.json, as recorded (no re-parse), with today\'s defaults for keys it lacks', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-recorded-'));
    dirs.push(dir);
    expect(await recordedConfig(dir)).toBeUndefined();
    const started = parseConfig({ verify: { command: ['make', 'test'] }, loop: { maxIterations: 7, budget: '20m' } });
    const { engineWait: _dropped, ...olderLoop } = started.loop;
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...started, loop: olderLoop }));
    const first = await recordedConfig(dir);
    expect(first?.file).toBe(path.join(dir, 'config.json'));
    expect(first?.config.verify.command).toEqual(['make', 'test']);
    // 20 minutes stays 20 minutes: the recorded config is already parsed.
    expect(first?.config.loop.budget).toBe(20 * 60_000);
    expect(first?.config.loop.maxIterations).toBe(7);
    expect(first?.config.loop.engineWait).toBe(parseConfig({}).loop.engineWait);
    await writeFile(path.join(dir, 'config.resumed-100.json'), JSON.stringify(parseConfig({ verify: { command: ['old'] } })));
    await writeFile(path.join(dir, 'config.resumed-200.json'), JSON.stringify(parseConfig({ verify: { command: ['newest'] } })));
    expect((await recordedConfig(dir))?.config.verify.command).toEqual(['newest']);
  });
});

describe('waiting for a container when the engine goes away', () => {
  // The shape of dockerode that startAndWait uses; wait() never settles, as docker-modem's does
  // when dockerd dies after the response headers.
  const api = (inspect: () => Promise<unknown>) =>
    ({
      getContainer: () => ({
        wait: () => new Promise(() => undefined),
        start: () => Promise.resolve(),
        inspect,
        kill: () => Promise.resolve(),
      }),
    }) as unknown as Docker;

  it('ends with an engine-loss error when the engine stops answering, instead of hanging', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED /run/x/docker.sock'), { code: 'ECONNREFUSED' });
    const t0 = Date.now();
    const error = await startAndWait(api(() => Promise.reject(refused)), 'c0ffee').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DockerUnavailableError);
    expect(isEngineLoss(error)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(ENGINE_WATCH_MS * 3);
  });

  it('ends with an engine-loss error when the engine restarted and stopped the container without answering the wait', async () => {
    const error = await startAndWait(api(() => Promise.resolve({ State: { Running: false } })), 'c0ffee').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DockerUnavailableError);
    expect(String((error as Error).message)).toMatch(/without answering the wait/);
  }, 20_000);
});
