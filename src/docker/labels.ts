// Labels are the source of truth for what loopbox owns: every container, network, volume and
// image it creates carries them, so `loopbox gc` can find what a crash left behind and never
// touches anything else.
import { createHash } from 'node:crypto';
import { stateDir } from '../common/paths.js';

export const LABELS = {
  managed: 'loopbox.managed',
  runId: 'loopbox.run-id',
  task: 'loopbox.task',
  iteration: 'loopbox.iteration',
  role: 'loopbox.role',
  image: 'loopbox.image',
  inputsHash: 'loopbox.inputs-hash',
  /** Which state directory (one per user or install) owns the resource; gc keeps to its own. */
  stateDir: 'loopbox.state-dir',
} as const;

export type Role = 'sentry' | 'agent' | 'verify' | 'model' | 'network' | 'decoy' | 'test' | 'runner' | 'model-keeper';

/** Run id of resources shared by all runs (the model network, the model server). */
export const SHARED_RUN_ID = 'shared';

export interface LabelInput {
  runId: string;
  role: Role;
  task?: string | undefined;
  iteration?: number | undefined;
}

export type Labels = Record<string, string>;

export function resourceLabels(input: LabelInput, env: NodeJS.ProcessEnv = process.env): Labels {
  const labels: Labels = {
    [LABELS.managed]: 'true',
    [LABELS.runId]: input.runId,
    [LABELS.role]: input.role,
    [LABELS.stateDir]: stateDirLabel(env),
  };
  if (input.task !== undefined) labels[LABELS.task] = input.task;
  if (input.iteration !== undefined) labels[LABELS.iteration] = String(input.iteration);
  return labels;
}

/**
 * A short digest of the state directory's path. Two users (or a user and CI) share one Docker
 * engine; each one's `gc` judges only the runs it has records for.
 */
export function stateDirLabel(env: NodeJS.ProcessEnv = process.env): string {
  return createHash('sha256').update(stateDir(env)).digest('hex').slice(0, 16);
}

/** Docker API label filter for everything loopbox manages, optionally one run. */
export function managedFilter(runId?: string): { label: string[] } {
  const label = [`${LABELS.managed}=true`];
  if (runId) label.push(`${LABELS.runId}=${runId}`);
  return { label };
}

/**
 * `loopbox-<run>-<task>-i<N>-<role>`: container names follow the labels, so `docker ps` reads
 * like `loopbox status`. A part that is not known (task, iteration) is left out.
 */
export function containerName(id: Omit<LabelInput, 'role'>, role: string): string {
  const parts = ['loopbox', id.runId];
  if (id.task) parts.push(id.task);
  if (id.iteration !== undefined) parts.push(`i${id.iteration}`);
  parts.push(role);
  return parts.join('-').replace(/[^a-zA-Z0-9_.-]/g, '_');
}
