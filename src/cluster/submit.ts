// `loopbox run --swarm`: each task one Swarm replicated job. The host checks everything first,
// hands the repository over by git URL, watches the jobs, and brings each loop's branch and run
// folder back, so status, audit, audit verify and report work as for a local run.
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import path from 'node:path';
import { ConfigError, LoopboxError, describe } from '../common/errors.js';
import { newRunId } from '../common/ids.js';
import { runDir, stateDir } from '../common/paths.js';
import type { Config } from '../config/schema.js';
import type { DockerClient, SwarmTask } from '../docker/client.js';
import { LABELS, resourceLabels } from '../docker/labels.js';
import { type AuditKey, newAuditKey, parseVerifierKey } from '../audit/chain.js';
import type { LoopSummary } from '../loop/loop.js';
import { loadTask } from '../loop/task.js';
import { type Exchange, requestStop, checkReachable, fetchResults, git, seedRemote, serveRepo, unpackRun } from './exchange.js';
import { JOB_RESULT_FILE } from './job.js';
import { type SwarmRecord, readRecord, saveRecord } from './record.js';

export { type SwarmRecord, SWARM_RECORD, readRecord } from './record.js';
import { type Preflight, preflight } from './preflight.js';
import { removeJob } from './status.js';
import { type JobPlan, k8sJobManifest, runnerServiceSpec, serviceName } from './spec.js';

export interface SwarmRunOptions {
  repo: string;
  /** Task files (absolute paths inside the repository). */
  files: string[];
  config: Config;
  /** loopbox.yaml as read (sent to the runners as is); empty: defaults. */
  configYaml: string;
  allowDirty?: boolean;
  signal?: AbortSignal;
  onLine?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
}



interface Planned {
  file: string;
  taskPath: string;
  task: string;
  runId: string;
}

/** Checks the repository and task files: committed at HEAD (the runners clone that commit). */
async function planTasks(repo: string, files: string[], allowDirty: boolean): Promise<{ base: string; planned: Planned[] }> {
  const top = (await git(['rev-parse', '--show-toplevel'], repo)).trim();
  const base = (await git(['rev-parse', 'HEAD'], top)).trim();
  if (!allowDirty && (await git(['status', '--porcelain', '--untracked-files=no'], top)).trim()) {
    throw new ConfigError(`${top} has uncommitted changes; the swarm jobs start from the last commit (${base.slice(0, 12)}) and would not include them.`, [], { hint: 'Commit or stash them first, or pass --allow-dirty.' });
  }
  const planned: Planned[] = [];
  for (const file of files) {
    const task = await loadTask(file);
    const taskPath = path.relative(top, path.resolve(file)).split(path.sep).join('/');
    if (taskPath.startsWith('..')) throw new ConfigError(`The task file ${file} is outside the repository ${top}: the runners see only what is committed there.`);
    await git(['cat-file', '-e', `${base}:${taskPath}`], top).catch(() => {
      throw new ConfigError(`The task file ${taskPath} is not committed at HEAD (${base.slice(0, 12)}): the runners clone that commit.`, [], { hint: `git add ${taskPath} && git commit` });
    });
    planned.push({ file, taskPath, task: task.name, runId: newRunId() });
  }
  return { base, planned };
}

/** The address the host's git daemon listens on for the nodes. */
async function serveAddress(docker: DockerClient, config: Config, pre: Preflight): Promise<string> {
  if (config.cluster.serveAddress) return config.cluster.serveAddress;
  const addr = pre.swarm.nodeAddr;
  if (addr && !addr.startsWith('127.') && addr !== '::1') return addr;
  // A one-node swarm advertised on loopback: the runner reaches this machine on docker0.
  const gateway = await bridgeAddress(docker);
  if (!gateway) throw new LoopboxError('Cannot tell which address the runners reach this machine at.', { hint: 'Set cluster.serveAddress to an address of this machine the nodes reach.' });
  return gateway;
}

/** This machine's address on Docker's default bridge (docker0): the runners' gateway. */
export async function bridgeAddress(docker: DockerClient): Promise<string | undefined> {
  const bridge = await docker.findNetwork('bridge');
  if (bridge?.IPAM?.Config?.[0]?.Gateway) return bridge.IPAM.Config[0].Gateway;
  const name = bridge?.Options?.['com.docker.network.bridge.name'] ?? 'docker0';
  const live = networkInterfaces()[name]?.find((a) => a.family === 'IPv4')?.address;
  if (live) return live;
  // docker0 without containers has no carrier and Node does not list it: Docker gives the
  // bridge the subnet's first address.
  const subnet = bridge?.IPAM?.Config?.find((c) => c.Subnet && !c.Subnet.includes(':'))?.Subnet;
  const m = subnet ? /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/\d+$/.exec(subnet) : null;
  return m ? `${m[1]}.${m[2]}.${m[3]}.${Number(m[4]) + 1}` : undefined;
}

/** Everything checked and planned, nothing started: for `--render` and as the first half of a run. */
export async function planSwarmRun(docker: DockerClient, options: SwarmRunOptions, pre?: Preflight): Promise<{ pre: Preflight; base: string; planned: Planned[]; plans: (url: string) => JobPlan[] }> {
  const p = pre ?? (await preflight(docker, options.config.cluster));
  const { base, planned } = await planTasks(options.repo, options.files, options.allowDirty ?? false);
  const env = options.env ?? process.env;
  const passEnv = Object.fromEntries(['LOOPBOX_IMAGE_TAG', 'LOOPBOX_DEBUG'].flatMap((k) => (env[k] ? [[k, env[k]]] : [])));
  const plans = (url: string): JobPlan[] =>
    planned.map((t) => ({ runId: t.runId, task: t.task, taskPath: t.taskPath, image: p.imageId, gitUrl: url, baseCommit: base, workDir: options.config.cluster.workDir, configYaml: options.configYaml, slotResource: p.slotResource, env: passEnv }));
  return { pre: p, base, planned, plans };
}

/** `loopbox run --render k8s`: the Kubernetes Job of each task (no swarm needed). */
export async function renderK8s(options: SwarmRunOptions & { imageRef: string; gitUrl: string }): Promise<Array<Record<string, unknown>>> {
  const { base, planned } = await planTasks(options.repo, options.files, options.allowDirty ?? false);
  return planned.map((t) =>
    k8sJobManifest({ runId: t.runId, task: t.task, taskPath: t.taskPath, image: options.imageRef, gitUrl: options.gitUrl, baseCommit: base, workDir: options.config.cluster.workDir, configYaml: options.configYaml, slotResource: true }, options.env),
  );
}

export async function runOnSwarm(docker: DockerClient, options: SwarmRunOptions): Promise<LoopSummary[]> {
  const say = (line: string): void => options.onLine?.(line);
  const env = options.env ?? process.env;
  const { config } = options;
  const { pre, base, planned, plans } = await planSwarmRun(docker, options);
  say(`swarm: ${pre.nodes.length} labelled node(s) (${pre.nodes.map((n) => n.hostname).join(', ')}), runner ${pre.imageRef} = ${pre.imageId.slice(7, 19)}, ${pre.slotResource ? `one ${'loopbox-slot'} per job` : 'no per-node slot resource declared'}`);
  let exchange: Exchange;
  if (config.cluster.gitUrl) {
    await checkReachable(config.cluster.gitUrl);
    exchange = { url: config.cluster.gitUrl, close: () => Promise.resolve() };
  } else {
    const address = await serveAddress(docker, config, pre);
    exchange = await serveRepo(options.repo, path.join(stateDir(env), 'swarm', planned[0]!.runId), address);
    say(`swarm: serving the repository for this run at ${exchange.url.replace(/\/[0-9a-f]{24}\.git$/, '/…')}`);
  }
  try {
    await seedRemote(options.repo, exchange.url, base, planned.map((t) => t.task));
    const jobs = plans(exchange.url);
    const secrets: string[] = [];
    const watched: Array<{ plan: JobPlan; record: SwarmRecord }> = [];
    try {
      for (const plan of jobs) {
        const key = newAuditKey(`loopbox-audit-swarm-${plan.runId}`);
        const secretName = `${serviceName(plan)}-audit-key`.slice(0, 64);
        const secretId = await docker.createSecret(secretName, key.pem, resourceLabels({ runId: plan.runId, role: 'runner', task: plan.task }, env));
        secrets.push(secretId);
        plan.auditKeySecret = { id: secretId, name: secretName };
        const spec = runnerServiceSpec(plan, env);
        const serviceId = await docker.createService(spec);
        const record: SwarmRecord = { runId: plan.runId, task: plan.task, service: serviceName(plan), serviceId, submittedAt: new Date().toISOString(), state: 'submitted', verifierKey: key.vkey, gitUrl: exchange.url, repo: path.resolve(options.repo), baseCommit: base };
        await saveRecord(record, env);
        watched.push({ plan, record });
        say(`[${plan.task}] submitted as swarm job ${record.service} (run ${plan.runId})`);
      }
    } catch (error) {
      for (const w of watched) await removeJob(docker, w.record.serviceId, w.plan.runId);
      for (const id of secrets) await docker.removeSecret(id).catch(() => undefined);
      throw error;
    }
    try {
      return await Promise.all(watched.map((w) => watchJob(docker, w.plan, w.record, options, exchange.url, pre)));
    } finally {
      for (const id of secrets) await docker.removeSecret(id).catch(() => undefined);
    }
  } finally {
    await exchange.close();
  }
}

const FINAL = new Set(['complete', 'failed', 'rejected', 'shutdown', 'orphaned', 'remove']);

async function watchJob(docker: DockerClient, plan: JobPlan, record: SwarmRecord, options: SwarmRunOptions, url: string, pre: Preflight): Promise<LoopSummary> {
  const env = options.env ?? process.env;
  const say = (line: string): void => options.onLine?.(`[${plan.task}] ${line}`);
  const { cluster } = options.config;
  const started = Date.now();
  let last: SwarmTask | undefined;
  let reason: string | undefined;
  let lastState = '';
  const hostnames = new Map(pre.nodes.map((n) => [n.id, n.hostname]));
  let stopped = false;
  let stopAsked = false;
  for (;;) {
    if (options.signal?.aborted && !stopAsked) {
      // Like Ctrl+C on a local loop: the runner sees the stop ref, winds down and pushes.
      stopAsked = true;
      say('stopping: asking the runner to wind down and push its work');
      await requestStop(options.repo, url, plan.runId, plan.baseCommit).catch((e: unknown) => say(`could not ask it: ${describe(e)}`));
    }
    const tasks = await docker.listTasks(record.serviceId).catch(() => [] as SwarmTask[]);
    if (!tasks.length && !(await docker.listServices([`${LABELS.runId}=${plan.runId}`, `${LABELS.role}=runner`])).length) {
      // Removed by `loopbox swarm stop` (or by hand): the runner got SIGTERM and is winding
      // down; its results are pushed before its container ends.
      say('the job was removed: waiting for the runner to push what it has');
      await removeJob(docker, record.serviceId, plan.runId, 90_000);
      reason = undefined;
      stopped = true;
      break;
    }
    last = tasks.sort((a, b) => a.updatedAt.localeCompare(b.updatedAt)).at(-1) ?? last;
    if (last && last.state !== lastState) {
      lastState = last.state;
      let node = hostnames.get(last.nodeId);
      if (last.nodeId && !node) {
        node = (await docker.listNodes()).find((n) => n.id === last!.nodeId)?.hostname;
        if (node) hostnames.set(last.nodeId, node);
      }
      record.node = node ?? record.node;
      record.state = last.state;
      await saveRecord(record, env);
      say(`${last.state}${record.node ? ` on ${record.node}` : ''}${last.error ? `: ${last.error}` : ''}`);
    }
    if (last && FINAL.has(last.state)) break;
    if (last?.state === 'running' && last.nodeId) {
      const node = (await docker.listNodes()).find((n) => n.id === last!.nodeId);
      if (node && node.state !== 'ready') {
        reason = `node ${node.hostname} was lost mid-loop (node state ${node.state})`;
        break;
      }
    }
    if ((!last || ['new', 'pending', 'assigned'].includes(last.state)) && Date.now() - started > cluster.placementTimeout) {
      reason = `no labelled node took the job in ${cluster.placementTimeout / 1000} s${last?.error ? ` (${last.error})` : last?.message ? ` (${last.message})` : ''}`;
      break;
    }
    if (Date.now() - started > cluster.timeout) {
      reason = `the job ran past cluster.timeout (${cluster.timeout / 1000} s)`;
      break;
    }
    await new Promise((r) => setTimeout(r, 2_000));
  }
  const logs = await docker.serviceLogs(record.serviceId, 20);
  await removeJob(docker, record.serviceId, plan.runId);
  // Results: the branch (fast-forward only) and the run folder, whatever the end.
  let fetched = { branch: false, artifacts: false };
  try {
    fetched = await fetchResults(options.repo, url, plan.runId, plan.task);
    if (fetched.artifacts) await unpackRun(options.repo, plan.runId, runDir(plan.runId, env));
  } catch (error) {
    reason ??= `fetching the results failed: ${describe(error)}`;
  }
  const summary = await hostSummary(plan, reason ?? (!stopped && last && last.state !== 'complete' && last.state !== 'failed' ? `job ${last.state}: ${last.error || last.message}` : undefined), fetched.artifacts, logs, env);
  record.state = summary.endState;
  record.reason = summary.reason;
  record.endedAt = new Date().toISOString();
  await saveRecord(record, env);
  return summary;
}

/** The loop's own summary (from the run folder the runner pushed), with the host's paths. */
async function hostSummary(plan: JobPlan, failure: string | undefined, artifacts: boolean, logs: string, env: NodeJS.ProcessEnv): Promise<LoopSummary> {
  const dir = runDir(plan.runId, env);
  let job: { summary?: LoopSummary; error?: string } = {};
  if (artifacts && existsSync(path.join(dir, JOB_RESULT_FILE))) job = JSON.parse(await readFile(path.join(dir, JOB_RESULT_FILE), 'utf8')) as typeof job;
  await markEnded(dir);
  if (job.summary && !failure) return { ...job.summary, runDir: dir, worktree: '' };
  const why = failure ?? job.error ?? (artifacts ? 'the runner ended without a summary' : `the runner pushed no results${logs.trim() ? `; its last output: ${logs.trim().split('\n').slice(-3).join(' | ')}` : ''}`);
  return {
    ...(job.summary ?? { iterations: 0, wallMs: 0, tokens: 0, blocked: 0, lastCommit: null, verifiedCommit: null, evidence: '-' }),
    runId: plan.runId,
    task: plan.task,
    endState: 'error',
    reason: why,
    exitCode: 1,
    branch: `loopbox/${plan.task}`,
    worktree: '',
    runDir: dir,
  };
}

/** A run folder the runner left without an end time (it was killed) gets the host's. */
async function markEnded(dir: string): Promise<void> {
  const file = path.join(dir, 'run.json');
  if (!existsSync(file)) return;
  const record = JSON.parse(await readFile(file, 'utf8')) as { endedAt?: string };
  if (!record.endedAt) await writeFile(file, `${JSON.stringify({ ...record, endedAt: new Date().toISOString() }, null, 2)}\n`);
}

/** The verifier key the host kept for a swarm run (undefined for a local run). */
export async function swarmVerifierKey(runId: string, env: NodeJS.ProcessEnv = process.env): Promise<AuditKey | undefined> {
  const record = await readRecord(runId, env);
  return record?.verifierKey ? parseVerifierKey(record.verifierKey) : undefined;
}
