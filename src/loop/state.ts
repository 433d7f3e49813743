// What a loop keeps on the host, in its run directory, so that a crash loses nothing that was
// committed and `loopbox run --resume RUN` can continue.
import { appendFile, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { SandboxTraffic } from '../audit/record.js';
import { writeJsonAtomic } from '../common/files.js';
import { parseConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { ReviewResult } from '../review/review.js';
import type { AccountingRecord, Baseline } from '../verify/accounting.js';
import type { EndState } from './brakes.js';
import type { EscalationState } from './escalation.js';

export interface IterationRecord {
  iteration: number;
  startedAt: string;
  endedAt: string;
  agent: {
    exitCode: number;
    timedOut: boolean;
    durationMs: number;
    /** Agent output bytes dropped between the kept head and tail (agent.maxOutput). */
    outputDropped?: number;
    /** Why loopbox stopped the agent early, besides its time limit (e.g. the disk limit). */
    stoppedFor?: string;
  };
  /** Tree id after the iteration (protected paths reverted): the loop's "diff hash". */
  tree: string;
  filesChanged: string[];
  protectedViolations: string[];
  /** Files the snapshot could not take, put back before verification. */
  skipped: Array<{ path: string; reason: string }>;
  /** Why this iteration was not verified although the agent finished (null when it was). */
  untrusted: string | null;
  /** `passed`: the command exited 0; `accounting`: whether that is evidence (test accounting). */
  verify: { passed: boolean; exitCode: number; timedOut: boolean; durationMs: number; outputTail: string; accounting?: AccountingRecord } | null;
  /** What `verified` rests on (`Loopbox-Verify` trailer); null when nothing was verified. */
  evidence?: string | null;
  commit: string | null;
  verified: boolean;
  /** Uncached prompt + completion tokens of this iteration's model requests (the budget's unit). */
  tokens: number;
  /** The same requests in detail, from the sandbox's model gateway; absent in older records. */
  model?: {
    promptTokens: number;
    cachedTokens: number;
    completionTokens: number;
    requests: number;
    denied: number;
    /** The model that did the work: model.name, or model.escalate.model when escalated (issue 20). */
    name?: string;
    /** The agent's requests went through the gateway to model.escalate's endpoint. */
    escalated?: boolean;
  };
  audit: SandboxTraffic & { records: number };
  /** The model server died during this iteration: it does not count towards the brakes. */
  modelDown: boolean;
  /** Why this iteration is void (the Docker engine went away mid-iteration): not counted towards the brakes. */
  void?: string;
  /** The reviewer's answer on this verified iteration (review on), with what it cost. */
  review?: IterationReview;
  /** Host-side milliseconds per step (snapshot, restore, commit, ownership, verifyCopy, verifyRun). */
  steps?: Record<string, number>;
}

export type IterationReview = Omit<ReviewResult, 'approved'>;

/** What the iteration record keeps of a review. */
export function reviewRecord(r: ReviewResult): IterationReview {
  const { approved: _approved, ...rest } = r;
  return rest;
}

/** Review requests and their cost over the whole run (resume adds to it). */
export interface ReviewTotals {
  requests: number;
  approved: number;
  rejected: number;
  inputTokens: number;
  outputTokens: number;
  /** null while no price is configured. */
  cost: number | null;
}

export function addReview(totals: ReviewTotals | undefined, r: IterationReview): ReviewTotals {
  const t = totals ?? { requests: 0, approved: 0, rejected: 0, inputTokens: 0, outputTokens: 0, cost: null };
  return {
    requests: t.requests + r.attempts,
    approved: t.approved + (r.verdict === 'approve' ? 1 : 0),
    rejected: t.rejected + (r.verdict === 'approve' ? 0 : 1),
    inputTokens: t.inputTokens + r.inputTokens,
    outputTokens: t.outputTokens + r.outputTokens,
    cost: r.cost === null ? t.cost : (t.cost ?? 0) + r.cost,
  };
}

export interface LoopState {
  runId: string;
  task: string;
  taskFile: string;
  repo: string;
  branch: string;
  worktree: string;
  baseTree: string;
  /** The verify command on the base tree (test accounting); null: none could be taken. */
  baseline?: Baseline | null | undefined;
  trees: string[];
  iteration: number;
  tokens: number;
  /** Wall time used by earlier sessions of this run (resume adds to it). */
  elapsedMs: number;
  /** Reviewer requests and cost so far (review on). */
  review?: ReviewTotals | undefined;
  /** model.escalate: failed iterations, whether escalated, escalated tokens (escalation.ts). */
  escalation?: EscalationState | undefined;
  endState?: EndState | undefined;
  endReason?: string | undefined;
  trigger: string;
}

export const STATE_FILE = 'state.json';
export const ITERATIONS_FILE = 'iterations.jsonl';

export async function saveState(dir: string, state: LoopState): Promise<void> {
  await writeJsonAtomic(path.join(dir, STATE_FILE), state);
}

export async function loadState(dir: string): Promise<LoopState | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, STATE_FILE), 'utf8')) as LoopState;
  } catch {
    return undefined;
  }
}

export async function appendIteration(dir: string, record: IterationRecord): Promise<void> {
  await appendFile(path.join(dir, ITERATIONS_FILE), `${JSON.stringify(record)}\n`);
}

export async function readIterations(dir: string): Promise<IterationRecord[]> {
  try {
    return (await readFile(path.join(dir, ITERATIONS_FILE), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as IterationRecord);
  } catch {
    return [];
  }
}

/**
 * The config a run went with, as its run directory records it: the latest
 * `config.resumed-<ms>.json`, else `config.json` (written when it started). Keys the recorded
 * file lacks (a run of an older loopbox) take today's defaults. Undefined when nothing is
 * recorded. `run --resume` uses it rather than the loopbox.yaml of the current directory.
 */
export async function recordedConfig(dir: string): Promise<{ config: Config; file: string } | undefined> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const resumed = names
    .map((n) => /^config\.resumed-(\d+)\.json$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .sort((a, b) => Number(b[1]) - Number(a[1]))
    .map((m) => m[0]);
  for (const name of [...resumed, 'config.json']) {
    if (!names.includes(name)) continue;
    const file = path.join(dir, name);
    const recorded = JSON.parse(await readFile(file, 'utf8')) as unknown;
    if (!isPlainObject(recorded)) continue;
    return { config: mergeRecorded(parseConfig({}), recorded) as Config, file };
  }
  return undefined;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `recorded` over `defaults`, object by object (the recorded config is already parsed: no re-parse). */
function mergeRecorded(defaults: unknown, recorded: unknown): unknown {
  if (!isPlainObject(defaults) || !isPlainObject(recorded)) return recorded === undefined ? defaults : recorded;
  const out: Record<string, unknown> = { ...defaults };
  for (const [key, value] of Object.entries(recorded)) out[key] = mergeRecorded(defaults[key], value);
  return out;
}
