// Shared pieces of the Docker tests: a labelled test run, decoy hosts on networks the test
// made itself, the real CLI, and the check that nothing labelled with the run is left.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { execa, type Result } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect } from 'vitest';
import { createExampleRepo } from '../../src/demo/example-repo.js';
import { DockerClient } from '../../src/docker/client.js';
import { LABELS, SHARED_RUN_ID, managedFilter, resourceLabels, stateDirLabel } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import { createRun, finishRun, type RunRecord } from '../../src/runs/registry.js';

export const repoRoot = path.resolve(import.meta.dirname, '..', '..');
export const cliPath = path.join(repoRoot, 'dist', 'cli', 'main.js');
export const docker = new DockerClient();

export function testRunId(prefix = 'test'): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  all: string;
}

/** Runs the real CLI (built into dist/) as a user would. */
export async function cli(args: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  const r: Result = await execa('node', [cliPath, ...args], {
    reject: false,
    timeout: options.timeoutMs ?? 180_000,
    env: { ...options.env },
    all: true,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), all: String(r.all ?? '') };
}

export interface Decoy {
  network: string;
  containerId: string;
  v4: string;
  v6: string | undefined;
  port: number;
}

/**
 * A decoy host that answers TCP on `port` and UDP on `port + 1`, on a plain (routable) bridge
 * network the test creates, with an IPv6 ULA subnet so IPv6 attempts have a route too.
 */
export async function startDecoy(runId: string): Promise<Decoy> {
  const network = `lbx-${runId}-decoy`;
  const labels = resourceLabels({ runId, role: 'decoy' });
  const octet = 64 + (randomBytes(1)[0]! % 64);
  const v6Prefix = `fd4c:${randomBytes(2).toString('hex')}:${randomBytes(2).toString('hex')}::`;
  await docker.createNetwork({ name: network, internal: false, labels, subnet: `10.213.${octet}.0/24`, ipv6Subnet: `${v6Prefix}/64` });
  const port = 7000;
  const server = `
    const net = require('net'), dgram = require('dgram');
    for (const host of ['0.0.0.0', '::']) {
      net.createServer((s) => s.end('decoy')).listen({ port: ${port}, host, ipv6Only: host === '::' }).on('error', () => {});
    }
    const u = dgram.createSocket('udp4');
    u.on('message', (m, r) => u.send('decoy', r.port, r.address));
    u.bind(${port + 1});
    console.log('decoy ready');`;
  const containerId = await docker.createContainer({
    name: `lbx-${runId}-decoy`,
    image: imageRef('agent'),
    entrypoint: ['node', '-e', server],
    labels,
    networkMode: network,
    capDrop: ['ALL'],
    user: '1000:1000',
  });
  await docker.start(containerId);
  await docker.waitForLog(containerId, /decoy ready/, 20_000, imageRef('agent'), 'decoy');
  const info = await docker.inspect(containerId);
  const endpoint = info.NetworkSettings.Networks[network]!;
  return { network, containerId, v4: endpoint.IPAddress, v6: endpoint.GlobalIPv6Address || undefined, port };
}

export async function beginTestRun(runId: string, stateEnv: NodeJS.ProcessEnv = process.env): Promise<RunRecord> {
  return createRun({ runId, kind: 'test' }, stateEnv);
}

/** Removes what the test made and asserts that nothing carrying its run label is left. */
export async function endTestRun(record: RunRecord, stateEnv: NodeJS.ProcessEnv = process.env): Promise<void> {
  const leftovers = await docker.listManaged(managedFilter(record.runId));
  for (const r of leftovers.filter((x) => x.kind === 'container')) await docker.remove(r.id);
  for (const r of leftovers.filter((x) => x.kind === 'network')) await docker.removeNetwork(r.id);
  await finishRun(record, stateEnv);
  const after = await docker.listManaged(managedFilter(record.runId));
  expect(after.map((r) => `${r.kind} ${r.name}`)).toEqual([]);
  // ... nor anything of the runs the tests started through the CLI (their run ids are made
  // there): every resource of this state dir but the shared model server and its network.
  const ours = (await docker.listManaged({ label: [`${LABELS.managed}=true`, `${LABELS.stateDir}=${stateDirLabel(stateEnv)}`] })).filter(
    (r) => r.labels[LABELS.runId] !== SHARED_RUN_ID,
  );
  expect(ours.map((r) => `${r.kind} ${r.name} (run ${r.labels[LABELS.runId]})`)).toEqual([]);
}

/** Polls `probe` until it returns a value (a container, a file...), instead of sleeping a fixed time. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Containers and networks of a run that are still present (for asserting the CLI cleaned up). */
export async function remaining(runId: string): Promise<string[]> {
  return (await docker.listManaged(managedFilter(runId))).map((r) => `${r.kind} ${r.name}`);
}

export function parseJsonLines<T>(text: string): T[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as T);
}

export interface LoopRepo {
  repo: string;
  config: string;
}

/** The demo's example repository (with extra task files, committed) and a loopbox.yaml beside it. */
export async function makeLoopRepo(config: Record<string, unknown>, tasks: string[] = []): Promise<LoopRepo> {
  const repo = await mkdtemp(path.join(tmpdir(), 'lbx-loop-'));
  await createExampleRepo(repo);
  if (tasks.length) {
    for (const t of tasks) await writeFile(path.join(repo, 'tasks', `${t}.md`), `# Task ${t}\n\n## Goal\nmake test/calc.test.js pass\n`);
    await execa('git', ['add', '-A'], { cwd: repo });
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'tasks'], { cwd: repo });
  }
  const file = `${repo}.yaml`;
  await writeFile(file, stringify(config));
  return { repo, config: file };
}

/**
 * A labelled test run for the enclosing describe block: begun before its tests, ended (and
 * checked for leftovers) after them; repos handed to `track` are removed then too.
 */
export function useTestRun(prefix: string): { track: <T extends LoopRepo>(r: T) => T } {
  let record: RunRecord | undefined;
  const paths: string[] = [];
  beforeAll(async () => {
    record = await beginTestRun(testRunId(prefix));
  });
  afterAll(async () => {
    for (const p of paths) await rm(p, { recursive: true, force: true });
    if (record) await endTestRun(record);
  });
  return {
    track: (r) => {
      paths.push(r.repo, r.config);
      return r;
    },
  };
}
