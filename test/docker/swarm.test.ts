// Loops as Docker Swarm jobs, against a real single-node swarm on this engine: the runner image,
// replicated jobs placed by node label, the repository in by git URL and the results (branch,
// run folder) back by push, so that `audit verify` and `report` work on the host. The swarm,
// the node label and every service are left as found.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bridgeAddress } from '../../src/cluster/submit.js';
import { LABELS } from '../../src/docker/labels.js';
import { type LoopRepo, cli, cliPath, docker, makeLoopRepo, parseJsonLines, useTestRun, waitFor } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;
const FIX = 'curl -s -m 5 http://model:8080/v1/models > /dev/null; sed -i "s/return a - b;/return a + b;/" calc.js';

let createdSwarm = false;
let labelledBy: string | undefined;
let nodeId = '';
let workDir = '';

async function runnerServices(): Promise<string[]> {
  return (await docker.listServices([`${LABELS.managed}=true`, `${LABELS.role}=runner`])).map((s) => s.name);
}

async function setLabel(on: boolean): Promise<void> {
  await docker.updateNodeLabels(nodeId, (labels) => {
    const next = { ...labels };
    if (on) next['loopbox.model'] = 'ready';
    else delete next['loopbox.model'];
    return next;
  });
}

function caseConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agent: { type: 'command', command: ['bash', '-c', FIX], timeout: '60s' },
    verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
    protectedPaths: ['test/**'],
    loop: { maxIterations: 2 },
    sandbox: { memory: '512m', cpus: 0.5, pids: 128 },
    cluster: { workDir, timeout: '6m', placementTimeout: '60s', ...extra },
  };
}

async function withConfig(c: LoopRepo, cfg: Record<string, unknown>): Promise<void> {
  await writeFile(c.config, stringify(cfg));
}

/** A bare repository served read-write by git daemon on docker0's address: the "user's remote". */
async function bareRemote(): Promise<{ dir: string; url: string; daemon: ChildProcess }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'lbx-swarm-remote-'));
  await execa('git', ['init', '--quiet', '--bare', path.join(dir, 'origin.git')]);
  await execa('git', ['config', 'daemon.receivepack', 'true'], { cwd: path.join(dir, 'origin.git') });
  const address = (await bridgeAddress(docker))!;
  const port = 20000 + Math.floor(Math.random() * 20000);
  const daemon = spawn('git', ['daemon', '--reuseaddr', `--base-path=${dir}`, `--listen=${address}`, `--port=${port}`, '--enable=receive-pack', '--export-all', dir], { stdio: 'ignore' });
  const url = `git://${address}:${port}/origin.git`;
  for (let i = 0; i < 50; i++) {
    if ((await execa('git', ['ls-remote', url], { reject: false })).exitCode === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return { dir, url, daemon };
}

describe('loops as Docker Swarm jobs (real single-node swarm, runner image, git daemon)', () => {
  const { track } = useTestRun('swarm');

  beforeAll(async () => {
    workDir = await mkdtemp(path.join(tmpdir(), 'lbx-swarm-work-'));
    const s = await docker.swarmState();
    if (s.state !== 'active') {
      // Before this test makes a swarm: an engine without one is refused with a clear error.
      const c = track(await makeLoopRepo(caseConfig(), ['noswarm']));
      const res = await cli(['--config', c.config, 'run', '--swarm', '--repo', c.repo, path.join(c.repo, 'tasks', 'noswarm.md')]);
      expect(res.exitCode, res.all).not.toBe(0);
      expect(res.stderr).toMatch(/not part of a swarm[\s\S]*docker swarm init/);
      await execa('docker', ['swarm', 'init', '--advertise-addr', '127.0.0.1'], { timeout: 60_000 });
      createdSwarm = true;
    }
    nodeId = (await docker.swarmState()).nodeId;
    const node = (await docker.listNodes()).find((n) => n.id === nodeId)!;
    if (node.labels['loopbox.model'] !== 'ready') labelledBy = 'test';
  }, 120_000);

  afterAll(async () => {
    for (const name of await runnerServices()) await docker.removeService(name);
    if (labelledBy && nodeId) await setLabel(false);
    if (createdSwarm) await execa('docker', ['swarm', 'leave', '--force'], { timeout: 60_000 });
    await rm(workDir, { recursive: true, force: true });
  }, 120_000);

  it('bad input is refused before anything starts: no labelled node, a node without the work folder, an unreachable git URL, a missing runner image', async () => {
    const c = track(await makeLoopRepo(caseConfig(), ['bad']));
    const task = path.join(c.repo, 'tasks', 'bad.md');
    const run = (): ReturnType<typeof cli> => cli(['--config', c.config, 'run', '--swarm', '--repo', c.repo, task], { timeoutMs: 150_000 });
    if (labelledBy) {
      const res = await run();
      expect(res.exitCode, res.all).toBe(1);
      expect(res.stderr).toMatch(/No swarm node is labelled loopbox\.model=ready[\s\S]*docker node update --label-add loopbox\.model=ready/);
      expect(await runnerServices()).toEqual([]);
      await setLabel(true);
    }
    await withConfig(c, caseConfig({ workDir: path.join(workDir, 'does-not-exist') }));
    let res = await run();
    expect(res.exitCode, res.all).toBe(1);
    expect(res.stderr).toMatch(/runner cannot start on 1 labelled node[\s\S]*(bind source path does not exist|invalid mount)[\s\S]*mkdir -p/);
    expect(await runnerServices()).toEqual([]);

    await withConfig(c, caseConfig({ gitUrl: 'git://127.0.0.1:9/nothing.git' }));
    res = await run();
    expect(res.exitCode, res.all).toBe(1);
    expect(res.stderr).toMatch(/git URL git:\/\/127\.0\.0\.1:9\/nothing\.git cannot be reached/);
    expect(await runnerServices()).toEqual([]);

    await withConfig(c, caseConfig({ image: 'loopbox/runner:absent-tag' }));
    res = await run();
    expect(res.exitCode, res.all).toBe(1);
    expect(res.stderr).toMatch(/runner image loopbox\/runner:absent-tag is not on this machine[\s\S]*images build --only runner/);
    expect(await runnerServices()).toEqual([]);
    // Nothing of a run was written, and the repository has no task branch.
    const branches = (await execa('git', ['branch', '--list', 'loopbox/*'], { cwd: c.repo })).stdout;
    expect(branches).toBe('');
  });

  it('two tasks as jobs end done, with verified branches pushed to a bare repo, and their audit verifies on the host', async () => {
    if (labelledBy) await setLabel(true);
    const remote = await bareRemote();
    try {
      const c = track(await makeLoopRepo(caseConfig({ gitUrl: remote.url }), ['s1', 's2']));
      const running = execa('node', [cliPath, '--config', c.config, 'run', '--swarm', '--json', '--repo', c.repo, path.join(c.repo, 'tasks', 's1.md'), path.join(c.repo, 'tasks', 's2.md')], { reject: false, all: true, timeout: 420_000 });
      // While they run, `loopbox status` shows them with their node.
      const seen = await waitFor('both jobs running in loopbox status', async () => {
        const st = await cli(['status']);
        return /swarm loops: 2/.test(st.stdout) && (st.stdout.match(/\bs[12]\s+\S+\s+running/g) ?? []).length === 2 ? st.stdout : undefined;
      }, 180_000);
      expect(seen).toMatch(/RUN\s+TASK\s+NODE\s+STATE/);
      // gc from the same state directory meanwhile: a running job and its runner container are
      // the swarm's, not a dead run's leftovers (the host has no run.json for them yet).
      const gc = await cli(['gc']);
      expect(gc.exitCode, gc.all).toBe(0);
      expect(gc.stdout).not.toMatch(/runner|service|loopbox-\d{8}-\d{6}-[0-9a-f]{6}-s[12]/);
      const done = await running;
      const res = { exitCode: done.exitCode, stdout: String(done.stdout), stderr: String(done.stderr), all: String(done.all) };
      expect(res.exitCode, res.all).toBe(0);
      const ends = parseJsonLines<{ type: string; summary: { runId: string; task: string; endState: string; verifiedCommit: string } }>(res.stdout).filter((e) => e.type === 'loop-end');
      expect(ends.map((e) => [e.summary.task, e.summary.endState]).sort()).toEqual([['s1', 'done'], ['s2', 'done']]);
      expect(res.stderr).toMatch(/submitted as swarm job/);
      for (const { summary } of ends) {
        const bare = path.join(remote.dir, 'origin.git');
        // The branch is in the bare remote and on the host, verified, with the fix.
        const log = (await execa('git', ['log', '--format=%B', `loopbox/${summary.task}`], { cwd: bare })).stdout;
        expect(log).toContain('Loopbox-Verified: yes');
        expect((await execa('git', ['rev-parse', `loopbox/${summary.task}`], { cwd: c.repo })).stdout).toBe((await execa('git', ['rev-parse', `loopbox/${summary.task}`], { cwd: bare })).stdout);
        expect((await execa('git', ['show', `loopbox/${summary.task}:calc.js`], { cwd: c.repo })).stdout).toContain('return a + b;');
        // The run folder came back: audit verify and report work on the host.
        const dir = path.join(stateDir, 'runs', summary.runId);
        for (const f of ['state.json', 'iterations.jsonl', 'audit.jsonl', 'run.json', 'report.html', 'swarm.json']) expect(existsSync(path.join(dir, f)), f).toBe(true);
        const verify = await cli(['audit', 'verify', '--run', summary.runId]);
        expect(verify.exitCode, verify.all).toBe(0);
        expect(verify.stdout).toMatch(/ok/i);
        const report = await cli(['report', summary.runId]);
        expect(report.exitCode, report.all).toBe(0);
        const record = JSON.parse(await readFile(path.join(dir, 'swarm.json'), 'utf8')) as { node: string; state: string };
        expect(record).toMatchObject({ state: 'done' });
        expect(record.node).toBeTruthy();
        // Nothing of the run is left: no service, no container on the node.
        expect(await docker.listContainers([`${LABELS.runId}=${summary.runId}`], { all: true })).toEqual([]);
      }
      expect(await runnerServices()).toEqual([]);
      expect((await execa('docker', ['secret', 'ls', '--filter', `label=${LABELS.role}=runner`, '-q'])).stdout).toBe('');
      // Attack: an edited audit record in the fetched run folder is a break under the run's key.
      const dir = path.join(stateDir, 'runs', ends[0]!.summary.runId);
      const audit = await readFile(path.join(dir, 'audit.jsonl'), 'utf8');
      // The chain was signed with the run's own key (made by the host, handed over as a secret).
      expect(audit).toContain(`"key":"loopbox-audit-swarm-${ends[0]!.summary.runId}+`);
      await writeFile(path.join(dir, 'audit.jsonl'), audit.replace('"createdAt":"', '"createdAt":"1'));
      expect((await cli(['audit', 'verify', '--run', ends[0]!.summary.runId])).exitCode).toBe(1);
    } finally {
      remote.daemon.kill();
      await rm(remote.dir, { recursive: true, force: true });
    }
  }, 480_000);

  it('without cluster.gitUrl the host serves the repository for the run, and removes the copy afterwards', async () => {
    if (labelledBy) await setLabel(true);
    const c = track(await makeLoopRepo(caseConfig(), ['served']));
    const res = await cli(['--config', c.config, 'run', '--swarm', '--json', '--repo', c.repo, path.join(c.repo, 'tasks', 'served.md')], { timeoutMs: 360_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stderr).toMatch(/serving the repository for this run at git:\/\//);
    const end = parseJsonLines<{ type: string; summary: { runId: string; endState: string } }>(res.stdout).find((e) => e.type === 'loop-end')!.summary;
    expect(end.endState).toBe('done');
    expect((await execa('git', ['log', '-1', '--format=%B', 'loopbox/served'], { cwd: c.repo })).stdout).toContain('Loopbox-Verified: yes');
    expect((await cli(['audit', 'verify', '--run', end.runId])).exitCode).toBe(0);
    expect(existsSync(path.join(stateDir, 'swarm', end.runId))).toBe(false);
  }, 420_000);

  it('swarm stop asks a running job to stop: the runner winds down, pushes its work in progress, and the host reports the loop aborted', async () => {
    if (labelledBy) await setLabel(true);
    const c = track(await makeLoopRepo(caseConfig(), ['held']));
    await withConfig(c, { ...caseConfig(), agent: { type: 'command', command: ['bash', '-c', 'echo wip > wip.txt; sleep 150'], timeout: '5m' } });
    const running = execa('node', [cliPath, '--config', c.config, 'run', '--swarm', '--json', '--repo', c.repo, path.join(c.repo, 'tasks', 'held.md')], { reject: false, all: true, timeout: 300_000 });
    const row = await waitFor('the held agent running on the node', async () => {
      const agents = await docker.listContainers([`${LABELS.role}=agent`, `${LABELS.task}=held`]);
      return agents[0];
    }, 180_000);
    const runId = row.labels[LABELS.runId]!;
    // The node's engine socket is in the runner only, never in the agent it started; the job
    // runs the runner pinned by image id (a worker never asks a registry for it).
    const agentMounts = (await docker.inspect(row.id)).Mounts.map((m) => m.Source);
    expect(agentMounts.some((m) => m.includes('docker.sock'))).toBe(false);
    const runner = (await docker.listContainers([`${LABELS.role}=runner`, `${LABELS.runId}=${runId}`]))[0]!;
    expect((await docker.inspect(runner.id)).Mounts.map((m) => m.Destination)).toContain('/var/run/docker.sock');
    const image = (await execa('docker', ['service', 'inspect', '--format', '{{.Spec.TaskTemplate.ContainerSpec.Image}}', (await docker.listServices([`${LABELS.runId}=${runId}`]))[0]!.id])).stdout;
    expect(image).toMatch(/^sha256:[0-9a-f]{64}$/);
    const stop = await cli(['swarm', 'stop', '--task', 'held']);
    expect(stop.exitCode, stop.all).toBe(0);
    expect(stop.stdout).toContain(`asked to stop: ${runId}`);
    const done = await running;
    const end = parseJsonLines<{ type: string; summary: { runId: string; endState: string } }>(String(done.stdout)).find((e) => e.type === 'loop-end')?.summary;
    expect(end, String(done.all)).toMatchObject({ runId, endState: 'aborted' });
    expect(done.exitCode).toBe(130);
    // Its work in progress was committed on the node and came back.
    expect((await execa('git', ['show', 'loopbox/held:wip.txt'], { cwd: c.repo })).stdout).toBe('wip');
    expect(await runnerServices()).toEqual([]);
    expect(await docker.listContainers([`${LABELS.runId}=${runId}`], { all: true })).toEqual([]);
  }, 360_000);

  it('swarm model up runs a keeper on every labelled node that adopts the node\'s running model server; down leaves a server it did not start', async () => {
    if (labelledBy) await setLabel(true);
    // The model server the Docker tests share (whichever checkout started it): the keeper adopts it.
    const server = (await docker.listContainers([`${LABELS.role}=model`]))[0]!;
    const gguf = (await docker.inspect(server.id)).HostConfig.Binds![0]!.split(':')[0]!;
    const up = await cli(['swarm', 'model', 'up', '--gguf', gguf]);
    expect(up.exitCode, up.all).toBe(0);
    expect(up.stdout).toMatch(/model keepers on /);
    try {
      const keeper = (await docker.listServices([`${LABELS.role}=model-keeper`]))[0]!;
      const logs = await waitFor('the keeper adopting the model server', async () => {
        const l = await docker.serviceLogs(keeper.id, 20);
        return /already running \(adopted\)/.test(l) ? l : undefined;
      }, 90_000);
      expect(logs).toMatch(/model server already running \(adopted\) at \d+\.\d+\.\d+\.\d+:8080/);
    } finally {
      const down = await cli(['swarm', 'model', 'down']);
      expect(down.stdout).toContain('removed the model keepers');
    }
    await new Promise((r) => setTimeout(r, 3_000));
    expect((await docker.listContainers([`${LABELS.role}=model`])).length).toBe(1);
    expect(await docker.listServices([`${LABELS.role}=model-keeper`])).toEqual([]);
  }, 180_000);
});
