// `loopbox gc`: removes containers, networks and volumes whose run is not alive (or, with
// `all`, everything labelled). Never touches anything without the `loopbox.managed` label.
import type { DockerClient, ManagedResource } from '../docker/client.js';
import { LABELS, SHARED_RUN_ID, managedFilter, stateDirLabel } from '../docker/labels.js';
import { isRunAlive, readRun } from './registry.js';

export interface GcOptions {
  all?: boolean;
  dryRun?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface GcResult {
  removed: ManagedResource[];
  kept: ManagedResource[];
  failed: Array<{ resource: ManagedResource; error: string }>;
}

/**
 * Removes every container labelled with this run (its sentry, agent, verify), whether or not the
 * run is alive: for a run being resumed after a crash, or stopped with --force.
 */
export async function removeRunContainers(docker: DockerClient, runId: string): Promise<void> {
  for (const r of await docker.listManaged(managedFilter(runId))) if (r.kind === 'container') await docker.remove(r.id);
}

export async function gc(docker: DockerClient, options: GcOptions = {}): Promise<GcResult> {
  const resources = await docker.listManaged(managedFilter());
  const alive = new Map<string, boolean>();
  const result: GcResult = { removed: [], kept: [], failed: [] };
  const doomed: ManagedResource[] = [];
  for (const resource of resources) {
    const runId = resource.labels[LABELS.runId];
    let remove: boolean;
    // Every resource loopbox creates carries a run id; without one it is not ours (e.g. a
    // user's container started from a loopbox image).
    if (!runId) continue;
    // A swarm task's container (a loop's runner, a model keeper) belongs to its service: the
    // swarm would see it fail. The services are judged below.
    if (!options.all && resource.kind === 'container' && SWARM_ROLES.has(resource.labels[LABELS.role] ?? '')) {
      result.kept.push(resource);
      continue;
    }
    // Another state directory's resource (another user, another checkout): its runs are not
    // in our registry, so we cannot tell whether they are alive. Only `--all` takes them.
    const owner = resource.labels[LABELS.stateDir];
    if (!options.all && owner !== undefined && owner !== stateDirLabel(options.env)) {
      result.kept.push(resource);
      continue;
    }
    if (options.all) remove = true;
    else if (runId === SHARED_RUN_ID) remove = false; // the model network/server: `--all` or `model down`
    else {
      if (!alive.has(runId)) alive.set(runId, isRunAlive(await readRun(runId, options.env)));
      remove = !alive.get(runId);
    }
    (remove ? doomed : result.kept).push(resource);
  }
  doomed.push(...(await finishedSwarmJobs(docker, options, result)));
  // Services and containers first: a network cannot go while a container is attached to it.
  const order = { service: 0, container: 1, volume: 2, network: 3 } as const;
  doomed.sort((a, b) => order[a.kind] - order[b.kind]);
  for (const resource of doomed) {
    if (options.dryRun) {
      result.removed.push(resource);
      continue;
    }
    try {
      if (resource.kind === 'service') await docker.removeService(resource.id);
      else if (resource.kind === 'container') await docker.remove(resource.id);
      else if (resource.kind === 'network') await docker.removeNetwork(resource.id);
      else await docker.removeVolume(resource.name);
      result.removed.push(resource);
    } catch (error) {
      result.failed.push({ resource, error: error instanceof Error ? error.message : String(error) });
    }
  }
  return result;
}

/**
 * Containers of runs whose loopbox died (SIGKILL, a crash) go before anything else touches the
 * state: a crashed run's verify container, or an agent whose deadline has not hit yet. Returns
 * how many containers were removed; never fails (a Docker hiccup here is not the caller's error).
 */
export async function reapDeadRunContainers(docker: DockerClient): Promise<number> {
  const result = await gc(docker, {}).catch(() => undefined);
  return result?.removed.filter((r) => r.kind === 'container').length ?? 0;
}

const SWARM_ROLES = new Set(['runner', 'model-keeper']);
const FINISHED = new Set(['complete', 'failed', 'rejected', 'shutdown', 'orphaned']);

/**
 * Loops submitted as Swarm jobs (`loopbox run --swarm`), found by label: a job whose task has
 * ended goes (its results were pushed to the git URL); a running one stays unless `all`. The
 * model keepers go only with `all`. Nothing on an engine that is not a swarm manager.
 */
async function finishedSwarmJobs(docker: DockerClient, options: GcOptions, result: GcResult): Promise<ManagedResource[]> {
  const swarm = await docker.swarmState().catch(() => undefined);
  if (!swarm || swarm.state !== 'active' || !swarm.isManager) return [];
  const doomed: ManagedResource[] = [];
  for (const s of await docker.listServices([`${LABELS.managed}=true`])) {
    const resource: ManagedResource = { kind: 'service', id: s.id, name: s.name, labels: s.labels };
    const owner = s.labels[LABELS.stateDir];
    if (!options.all && owner !== undefined && owner !== stateDirLabel(options.env)) {
      result.kept.push(resource);
      continue;
    }
    let remove = Boolean(options.all);
    if (!remove && s.labels[LABELS.role] === 'runner') {
      const last = (await docker.listTasks(s.id)).sort((a, b) => a.updatedAt.localeCompare(b.updatedAt)).at(-1);
      remove = last !== undefined && FINISHED.has(last.state);
    }
    (remove ? doomed : result.kept).push(resource);
  }
  return doomed;
}
