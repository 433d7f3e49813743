// Many loops on one model server, against real Docker, llama-server and git: slot-bounded
// scheduling, isolation between loops, status and stop from another process, model death
// mid-run, cron skip-on-overlap, and the webhook server starting a real loop.
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import type { ContainerSummary } from '../../src/docker/client.js';
import { runDir } from '../../src/common/paths.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { MODEL_NETWORK, findModelServer } from '../../src/model/network.js';
import { MODEL_CONTAINER, modelUp } from '../../src/model/server.js';
import { readRun } from '../../src/runs/registry.js';
import { type LoopRepo, cli, cliPath, docker, makeLoopRepo, parseJsonLines, useTestRun, waitFor } from './helpers.js';

function makeRepo(tasks: string[], agent: string, extra: Record<string, unknown> = {}): Promise<LoopRepo> {
  return makeLoopRepo(
    {
      agent: { type: 'command', command: ['bash', '-c', agent], timeout: '90s' },
      verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
      loop: { maxIterations: 1 },
      sandbox: { memory: '512m', cpus: 0.5, pids: 128 },
      ...extra,
    },
    tasks,
  );
}

function spawnCli(args: string[], env: Record<string, string> = {}): ResultPromise<{ reject: false; all: true; env: Record<string, string> }> {
  return execa('node', [cliPath, ...args], { reject: false, all: true, env });
}


async function agentsRunning(task?: string): Promise<ContainerSummary[]> {
  return docker.listContainers(['loopbox.role=agent', ...(task ? [`loopbox.task=${task}`] : [])]);
}

describe('parallel loops and triggers (real Docker, llama-server, git)', () => {
  const { track } = useTestRun('par');

  it('never runs more agents than the model has slots; loops beyond queue; a summary table at the end', async () => {
    const repo = track(await makeRepo(['p1', 'p2', 'p3'], 'sleep 4; echo "$LOOPBOX_ITERATION" > "out-$(date +%s%N).txt"'));
    const slots = (await cli(['model', 'status', '--json'])).stdout;
    expect(JSON.parse(slots)).toMatchObject({ slots: { total: 2 } });
    const run = spawnCli(['--config', repo.config, 'run', '--repo', repo.repo, ...['p1', 'p2', 'p3'].map((t) => path.join(repo.repo, 'tasks', `${t}.md`))]);
    let peak = 0;
    let sawQueued = false;
    while (run.exitCode === null && !run.killed) {
      const n = (await agentsRunning()).filter((a) => ['p1', 'p2', 'p3'].includes(a.labels['loopbox.task'] ?? '')).length;
      peak = Math.max(peak, n);
      if (!sawQueued) {
        const status = JSON.parse((await cli(['status', '--json'])).stdout) as { loops: Array<{ task: string; state: string }> };
        sawQueued = status.loops.some((l) => l.state === 'queued' && l.task.startsWith('p'));
      }
      await Promise.race([run, new Promise((r) => setTimeout(r, 250))]);
    }
    const res = await run;
    expect(res.exitCode, String(res.all)).toBe(3);
    expect(peak).toBe(2);
    expect(sawQueued, 'the third loop was visible as queued').toBe(true);
    expect(String(res.stderr)).toMatch(/3 tasks, 2 at once, 2 model slot/);
    for (const t of ['p1', 'p2', 'p3']) expect(String(res.stderr)).toMatch(new RegExp(`^${t}\\s+capped\\s+1\\s`, 'm'));
  });

  it('one loop cannot reach another; status shows it from another process; stop ends it like Ctrl+C', async () => {
    const a = track(await makeRepo(['holder'], 'echo wip > wip.txt; sleep 120', { agent: { type: 'command', command: ['bash', '-c', 'echo wip > wip.txt; sleep 120'], timeout: '5m' } }));
    const runA = spawnCli(['--config', a.config, 'run', '--repo', a.repo, '--json', path.join(a.repo, 'tasks', 'holder.md')]);
    const holder = await waitFor('the holder agent', async () => (await agentsRunning('holder'))[0]);
    const runIdA = holder.labels['loopbox.run-id']!;
    const sentry = await docker.inspect(`loopbox-${runIdA}-holder-sentry`);
    const sentryIp = sentry.NetworkSettings.Networks[MODEL_NETWORK]!.IPAddress;
    expect(sentryIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);

    const probe = `node -e "const s=require('net').connect({host:'${sentryIp}',port:7000});s.setTimeout(3000,()=>{console.log('peer=timeout');process.exit(0)});s.on('connect',()=>{console.log('peer=connected');process.exit(0)});s.on('error',e=>{console.log('peer='+e.code);process.exit(0)})"`;
    const b = track(await makeRepo(['prober'], probe));
    const resB = await cli(['--config', b.config, 'run', '--repo', b.repo, '--json', path.join(b.repo, 'tasks', 'prober.md')]);
    const endB = parseJsonLines<{ type: string; summary?: { runId: string } }>(resB.stdout).find((e) => e.type === 'loop-end')?.summary;
    expect(endB, resB.all).toBeDefined();
    const agentLog = await readFile(path.join(runDir(endB!.runId), 'sandboxes', 'i1.agent.log'), 'utf8');
    expect(agentLog).toContain('peer=ECONNREFUSED');
    const auditB = parseJsonLines<AuditRecord>((await cli(['audit', '--run', endB!.runId, '--json'])).stdout);
    expect(auditB.some((r) => r.kind === 'packet' && r.dst === sentryIp && r.dstPort === 7000 && r.task === 'prober')).toBe(true);

    // Loop A is untouched by B and visible from another process.
    const status = JSON.parse((await cli(['status', '--json'])).stdout) as { loops: Array<{ runId: string; state: string; iteration: number }>; model: { running: boolean } };
    expect(status.loops.find((l) => l.runId === runIdA)).toMatchObject({ state: 'running', iteration: 1 });
    expect(status.model.running).toBe(true);

    const stop = await cli(['stop', runIdA]);
    expect(stop.exitCode, stop.all).toBe(0);
    const resA = await runA;
    expect(resA.exitCode, String(resA.all)).toBe(130);
    const endA = parseJsonLines<{ type: string; summary?: { endState: string; reason: string } }>(String(resA.stdout)).find((e) => e.type === 'loop-end')?.summary;
    expect(endA).toMatchObject({ endState: 'aborted' });
    const { stdout } = await execa('git', ['show', 'loopbox/holder:wip.txt'], { cwd: a.repo });
    expect(stdout).toBe('wip');
    expect((await cli(['stop', runIdA])).stderr).toMatch(/Nothing to stop/);
  });

  it('a model server that dies mid-run pauses the loop, is restarted once, and the loop goes on', async () => {
    const repo = track(await makeRepo(['survivor'], 'sleep 5; date +%s%N > progress.txt', { loop: { maxIterations: 2, noProgress: 5 } }));
    const run = spawnCli(['--config', repo.config, 'run', '--repo', repo.repo, '--json', path.join(repo.repo, 'tasks', 'survivor.md')]);
    await waitFor('the survivor agent', async () => (await agentsRunning('survivor'))[0]);
    await docker.kill(MODEL_CONTAINER);
    const res = await run;
    const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: { endState: string } }>(String(res.stdout));
    const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
    expect(events.some((e) => e.type === 'model-down'), String(res.all)).toBe(true);
    expect(iterations[0]).toMatchObject({ modelDown: true, verify: null });
    expect(iterations.filter((i) => !i.modelDown)).toHaveLength(2);
    expect(events.find((e) => e.type === 'loop-end')?.summary?.endState).toBe('capped');
    expect(await findModelServer(docker)).toBeDefined();
  });

  it('a model server that stays down ends the loop in a clear error', async () => {
    const model = await findModelServer(docker);
    const info = await docker.inspect(model!.containerId);
    const gguf = info.HostConfig.Binds![0]!.split(':')[0]!;
    const repo = track(await makeRepo(['orphaned'], 'sleep 4'));
    const run = spawnCli(['--config', repo.config, 'run', '--repo', repo.repo, path.join(repo.repo, 'tasks', 'orphaned.md')]);
    await waitFor('the orphaned agent', async () => (await agentsRunning('orphaned'))[0]);
    await docker.remove(MODEL_CONTAINER);
    const res = await run;
    expect(res.exitCode, String(res.all)).toBe(1);
    expect(String(res.stderr)).toMatch(/model server is down/);
    await modelUp(docker, { gguf, ctxSize: 131072, parallel: 2, gpuLayers: 0, gpus: 'none', startTimeoutMs: 60_000 });
  });

  it('schedule: a tick while the task still runs is skipped and logged; the run records its trigger', async () => {
    const repo = track(await makeRepo(['nightly'], 'sleep 6', { schedule: [{ cron: '* * * * * *', task: 'tasks/nightly.md' }] }));
    const sched = spawnCli(['--config', repo.config, 'schedule', '--repo', repo.repo]);
    await waitFor('a scheduled agent', async () => (await agentsRunning('nightly'))[0], 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    sched.kill('SIGINT');
    const res = await sched;
    const log = parseJsonLines<{ event: string; reason?: string; runId?: string; task?: string }>(String(res.stderr));
    const started = log.filter((e) => e.event === 'schedule-started');
    expect(started, String(res.all)).toHaveLength(1);
    expect(log.filter((e) => e.event === 'schedule-skipped' && e.reason === 'busy').length).toBeGreaterThanOrEqual(2);
    expect((await readRun(started[0]!.runId!))?.trigger).toBe('schedule:* * * * * *');
  });

  it('serve: refuses to start with a secret under 32 bytes, saying so (exit 2)', async () => {
    const repo = track(await makeRepo(['fix-ci'], 'true', { serve: { github: { task: 'tasks/fix-ci.md' }, port: 0 } }));
    const res = await spawnCli(['--config', repo.config, 'serve', '--repo', repo.repo], { LOOPBOX_WEBHOOK_SECRET: 'short-secret' });
    expect(res.exitCode).toBe(2);
    expect(String(res.all)).toContain('The webhook secret LOOPBOX_WEBHOOK_SECRET is 12 bytes long; loopbox serve needs at least 32.');
  });

  it('serve: a signed GitHub CI failure starts a real loop; unsigned and replayed requests are refused', async () => {
    const repo = track(await makeRepo(['fix-ci'], 'sleep 1', { serve: { github: { task: 'tasks/fix-ci.md' }, port: 0 } }));
    const secret = 'test-secret-do-not-use-0123456789abcdef';
    const server = spawnCli(['--config', repo.config, 'serve', '--repo', repo.repo], { LOOPBOX_WEBHOOK_SECRET: secret });
    try {
      let stderr = '';
      server.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
      const url = await waitFor('the server', () => Promise.resolve(/listening on (http:\/\/\S+)/.exec(stderr)?.[1]), 30_000);
      const body = JSON.stringify({ action: 'completed', workflow_run: { conclusion: 'failure', name: 'CI', head_branch: 'main' } });
      const sign = (b: string): string => `sha256=${createHmac('sha256', secret).update(b).digest('hex')}`;
      const post = (headers: Record<string, string>, b = body) => fetch(`${url}/hooks/github`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-github-event': 'workflow_run', ...headers }, body: b });
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      expect((await post({ 'x-github-delivery': 'd-unsigned' })).status).toBe(401);
      expect((await post({ 'x-github-delivery': 'd-bad', 'x-hub-signature-256': sign('other body') })).status).toBe(401);
      const ok = await post({ 'x-github-delivery': 'd-1', 'x-hub-signature-256': sign(body) });
      expect(ok.status).toBe(202);
      const { runId } = (await ok.json()) as { runId: string };
      expect((await post({ 'x-github-delivery': 'd-1', 'x-hub-signature-256': sign(body) })).status).toBe(409);
      // Issue 8 item 4: the captured request under a new delivery id is a replay too.
      expect((await post({ 'x-github-delivery': 'd-2-forged', 'x-hub-signature-256': sign(body) })).status).toBe(409);
      const run = await waitFor('the webhook run to end', async () => {
        const r = await readRun(runId);
        return r?.endedAt ? r : undefined;
      }, 90_000);
      expect(run.trigger).toBe('webhook:github:workflow_run:d-1');
      expect(run.task).toBe('fix-ci');
    } finally {
      server.kill('SIGINT');
      await server;
    }
  });
});
