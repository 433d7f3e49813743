// `loopbox status` / `stop` / `gc` for loops running as Swarm jobs: found by their labels.
import type { DockerClient } from '../docker/client.js';
import { LABELS } from '../docker/labels.js';
import { requestStop } from './exchange.js';
import { readRecord } from './record.js';

export interface SwarmLoopRow {
  runId: string;
  task: string;
  service: string;
  node: string;
  /** The job's task state (pending, running, complete, failed, …). */
  state: string;
  error: string;
  createdAt: string;
}

/** The loopbox runner jobs on this swarm (empty when the engine is not a swarm manager). */
export async function swarmLoops(docker: DockerClient): Promise<SwarmLoopRow[]> {
  const swarm = await docker.swarmState().catch(() => undefined);
  if (!swarm || swarm.state !== 'active' || !swarm.isManager) return [];
  const services = await docker.listServices([`${LABELS.managed}=true`, `${LABELS.role}=runner`]);
  const nodes = new Map((await docker.listNodes()).map((n) => [n.id, n]));
  const rows: SwarmLoopRow[] = [];
  for (const s of services) {
    const task = (await docker.listTasks(s.id)).sort((a, b) => a.updatedAt.localeCompare(b.updatedAt)).at(-1);
    const node = task?.nodeId ? nodes.get(task.nodeId) : undefined;
    const lost = task?.state === 'running' && node && node.state !== 'ready';
    rows.push({
      runId: s.labels[LABELS.runId] ?? '?',
      task: s.labels[LABELS.task] ?? '?',
      service: s.name,
      node: node ? `${node.hostname}${node.state === 'ready' ? '' : ` (${node.state})`}` : '-',
      state: lost ? 'node-lost' : (task?.state ?? 'submitted'),
      error: task?.error ?? '',
      createdAt: s.createdAt,
    });
  }
  return rows;
}

/**
 * Stops the jobs of the given run (or task, or all). With the host's record of the run (this
 * state directory submitted it), the runner is asked through its git URL and winds down like
 * Ctrl+C, pushing its work; the host that watches it fetches that. Without one, or with
 * `force`, the job is removed at once (its container too: Swarm leaves a removed job's running).
 */
export async function stopSwarmLoops(docker: DockerClient, target: { runId?: string | undefined; task?: string | undefined; all?: boolean | undefined }, force = false, env: NodeJS.ProcessEnv = process.env): Promise<Array<{ runId: string; how: 'asked' | 'removed' }>> {
  const rows = await swarmLoops(docker);
  const chosen = rows.filter((r) => target.all || (target.runId && r.runId === target.runId) || (target.task && r.task === target.task));
  const done: Array<{ runId: string; how: 'asked' | 'removed' }> = [];
  for (const r of chosen) {
    const record = force ? undefined : await readRecord(r.runId, env);
    if (record?.gitUrl && record.repo && record.baseCommit) {
      await requestStop(record.repo, record.gitUrl, r.runId, record.baseCommit);
      done.push({ runId: r.runId, how: 'asked' });
    } else {
      await removeJob(docker, r.service, r.runId, 5_000);
      done.push({ runId: r.runId, how: 'removed' });
    }
  }
  return done;
}

/**
 * Removes a job's service and waits until its container is gone too (the engine removes task
 * containers a moment after the service): nothing labelled with the run is left behind.
 */
export async function removeJob(docker: DockerClient, serviceId: string, runId: string, timeoutMs = 30_000): Promise<void> {
  await docker.removeService(serviceId);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await docker.listContainers([`${LABELS.managed}=true`, `${LABELS.runId}=${runId}`, `${LABELS.role}=runner`], { all: true });
    if (!left.length) return;
    if (Date.now() > deadline) {
      for (const c of left) await docker.remove(c.id).catch(() => undefined);
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}
