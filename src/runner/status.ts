// `loopbox status` and `loopbox stop`: read and steer loops from another terminal, through
// the run directories (no socket, nothing to keep alive).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LoopboxError } from '../common/errors.js';
import { runDir } from '../common/paths.js';
import type { DockerClient } from '../docker/client.js';
import { STOP_FILE } from '../loop/loop.js';
import { loadState, readIterations } from '../loop/state.js';
import { removeRunContainers } from '../runs/gc.js';
import { isRunAlive, listRuns } from '../runs/registry.js';

export interface LoopStatusRow {
  runId: string;
  task: string;
  state: 'queued' | 'running';
  iteration: number;
  elapsedMs: number;
  lastVerify: 'pass' | 'fail' | 'timeout' | '-';
  tokens: number;
  trigger: string;
  pid: number;
}

export async function loopStatus(env = process.env): Promise<LoopStatusRow[]> {
  const rows: LoopStatusRow[] = [];
  for (const run of await listRuns(env)) {
    if (run.kind !== 'loop' || !isRunAlive(run)) continue;
    const dir = runDir(run.runId, env);
    const state = run.queued ? undefined : await loadState(dir);
    const last = (await readIterations(dir)).at(-1);
    rows.push({
      runId: run.runId,
      task: run.task ?? '?',
      state: run.queued ? 'queued' : 'running',
      iteration: state ? state.iteration + 1 : 0,
      elapsedMs: Date.now() - new Date(run.startedAt).getTime(),
      lastVerify: !last?.verify ? '-' : last.verified ? 'pass' : last.verify.timedOut ? 'timeout' : 'fail',
      tokens: state?.tokens ?? 0,
      trigger: run.trigger ?? 'manual',
      pid: run.pid,
    });
  }
  return rows;
}

export interface StopTarget {
  runId?: string | undefined;
  task?: string | undefined;
  all?: boolean | undefined;
}

/**
 * Asks loops to stop the way Ctrl+C does (agent stopped, WIP committed, recorded). With
 * `force`, their containers are removed at once as well, so a stuck iteration ends now.
 */
export async function stopLoops(docker: DockerClient, target: StopTarget, force: boolean, env = process.env): Promise<string[]> {
  const live = await loopStatus(env);
  const chosen = live.filter((r) => target.all || (target.runId !== undefined && r.runId === target.runId) || (target.task !== undefined && r.task === target.task));
  if (!chosen.length) {
    const what = target.all ? 'no loop is running' : target.runId ? `no running loop has run id ${target.runId}` : `no running loop works on task ${target.task}`;
    throw new LoopboxError(`Nothing to stop: ${what}.`, { hint: 'See `loopbox status`.' });
  }
  for (const row of chosen) {
    await writeFile(path.join(runDir(row.runId, env), STOP_FILE), force ? 'force\n' : 'graceful\n');
    if (force) await removeRunContainers(docker, row.runId);
  }
  return chosen.map((r) => r.runId);
}
