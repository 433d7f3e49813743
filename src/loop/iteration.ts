// One iteration of the loop as a pipeline of steps, each with one job:
//
//   prepare  → write the task, feedback and adapter files the agent reads
//   agent    → run the agent in the run's sentry, bounded by its deadline and output cap
//   collect  → attribute what the sentry logged (and the model's tokens) to this iteration
//   snapshot → read what the agent left into a tree, protected paths taken from the base,
//              and put the worktree back where the agent broke it
//   verify   → run the verify command in a clean container on exactly that tree
//   account  → decide whether the verify result is evidence of a pass
//   commit   → commit the tree from the host
//   decide   → the brakes (loop.ts), never the agent's word
//
// The steps share a `LoopContext` (what is fixed for the run) and pass plain values along.
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Semaphore } from '../common/semaphore.js';
import type { Config } from '../config/schema.js';
import type { ContainerBackend, SandboxHandle } from '../backend/backend.js';
import { commitSnapshot, ensureTaskWorktree, git, restorePaths, revParse, snapshotWorktree, syncWorktreeIndex, type Snapshot } from '../git/index.js';
import { imageRef } from '../images/catalog.js';
import type { ModelSupervisor } from '../model/supervisor.js';
import type { AgentRun, CollectResult } from '../sandbox/sandbox.js';
import type { SandboxIdentity } from '../sandbox/specs.js';
import { askReviewer, reviewDiff, reviewRequired, type ReviewResult } from '../review/review.js';
import { type Baseline, account as accountTests, accountingRecord } from '../verify/accounting.js';
import type { VerifyOptions, VerifyResult } from '../verify/verify.js';
import { LOOP_MOUNT, NOTES_MOUNT, agentInvocation } from './agents.js';
import { CappedLog } from './capped-log.js';
import { type EscalationState, usesLocalModelSlot, workerModel } from './escalation.js';
import { DiskWatch } from './disk-watch.js';
import { type Accounting, commitMessage } from './feedback.js';
import { reviewRecord, type IterationRecord, type LoopState } from './state.js';
import type { Task } from './task.js';
import { forceRemoveTree, lendPaths, lendTree, takeBackPath } from './workspace.js';

/** What is fixed for one loop run: its folders, limits and shared resources. */
export interface LoopContext {
  /** Where the sentry, agents and verify containers run (and where the model server is looked for). */
  backend: ContainerBackend;
  config: Config;
  runId: string;
  task: Task;
  repo: string;
  /** The run directory (state.json, iterations.jsonl, sandboxes/, notes/, mount/). */
  dir: string;
  log: Logger;
  signal: AbortSignal;
  verifyCommand: string[];
  isProtected: (path: string) => boolean;
  mountDir: string;
  notesDir: string;
  gitMask: string;
  /** The uid the agent runs as. */
  agentUid: number;
  /** Running as root: the host hands the paths it writes back to the agent's uid. */
  lend: boolean;
  supervisor?: ModelSupervisor | undefined;
  external?: { ip: string; port: number; names: string[] } | undefined;
  agentSlots?: Semaphore | undefined;
  sentries: SentryKeeper;
  /** The verify command on the base tree (test accounting); null when none could be taken. */
  baseline: Baseline | null;
  /** Bytes in the worktree and notes when the session began (the disk watch's baseline). */
  diskBaseline: number;
  stateEnv?: NodeJS.ProcessEnv | undefined;
  /** model.escalate's key, read from the host's environment at the start (never written anywhere). */
  escalateKey?: string | undefined;
}

/**
 * One sentry per run; a new one when the model server came back at another address, and when
 * the run escalates to model.escalate's endpoint or goes back (only an escalated sentry's
 * gateway holds the key: a local one never has it).
 */
export class SentryKeeper {
  private sentry: SandboxHandle | undefined;
  private escalated = false;
  /** The last iteration's audit collection: a void iteration (engine loss) still counts its tokens. */
  lastCollect: { iteration: number; result: Promise<CollectResult> } | undefined;
  constructor(
    private readonly auditRoot: string,
    private count: number,
  ) {}

  /** `tokensUsed`: the run's tokens so far, where a new sentry's gateway starts its budget count. */
  async get(ctx: LoopContext, modelIp: string | undefined, tokensUsed: number, escalation?: EscalationState): Promise<SandboxHandle> {
    if (this.sentry && modelIp && this.sentry.modelIp !== modelIp) await this.stop();
    const esc = ctx.config.model.escalate;
    const escalate = esc && escalation?.active ? { endpoint: esc.endpoint, model: esc.model, apiKey: ctx.escalateKey, tokenBudget: esc.tokenBudget, tokensUsed: escalation.tokens } : undefined;
    if (this.sentry && this.escalated !== (escalate !== undefined)) await this.stop();
    this.escalated = escalate !== undefined;
    this.sentry ??= await ctx.backend.startSentry({
      runId: ctx.runId,
      task: ctx.task.name,
      auditDir: path.join(this.auditRoot, `sentry-${(this.count += 1)}`),
      allow: ctx.config.sandbox.allow,
      modelEndpoint: ctx.external,
      // The gateway enforces the loop's token budget itself (429 past it).
      gateway: { maxBodyBytes: ctx.config.model.maxRequestBody, maxTokens: ctx.config.model.maxTokens, tokenBudget: ctx.config.loop.tokenBudget, tokensUsed },
      escalate,
      logger: ctx.log,
      stateEnv: ctx.stateEnv,
    });
    return this.sentry;
  }

  /** The sentry in use, if any (the engine-loss path reads a dead one's audit files through it). */
  get current(): SandboxHandle | undefined {
    return this.sentry;
  }

  async stop(): Promise<void> {
    const s = this.sentry;
    this.sentry = undefined;
    await s?.stop();
  }
}

/** Host-side milliseconds per step of one iteration (the bench reads them). */
export type StepTimes = Record<string, number>;

async function timed<T>(steps: StepTimes, name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    steps[name] = (steps[name] ?? 0) + performance.now() - t0;
  }
}

// ---------------------------------------------------------------------------------------------
// prepare

export async function prepare(ctx: LoopContext, iteration: number, feedback: string): Promise<ReturnType<typeof agentInvocation>> {
  const invocation = agentInvocation(ctx.config, iteration);
  await writeFile(path.join(ctx.mountDir, 'task.md'), ctx.task.text);
  await writeFile(path.join(ctx.mountDir, 'feedback.md'), feedback || 'No feedback yet: this is the first iteration.\n');
  for (const [name, content] of Object.entries(invocation.files)) await writeFile(path.join(ctx.mountDir, name), content);
  return invocation;
}

// ---------------------------------------------------------------------------------------------
// agent

export interface AgentStep {
  run: AgentRun;
  /** Bytes of agent output dropped between the kept head and tail. */
  outputDropped: number;
  /** Why the host stopped the agent early (not its timeout, not the loop's stop). */
  stoppedFor: string | undefined;
  /** The sentry's records and the model gateway's tokens for this iteration. */
  collecting: Promise<CollectResult>;
}

/** Runs the agent; undefined when the loop was stopped while waiting for a model slot. */
export async function agent(ctx: LoopContext, state: LoopState, iteration: number, invocation: ReturnType<typeof agentInvocation>): Promise<AgentStep | undefined> {
  const model = ctx.supervisor ? await ctx.supervisor.ensureUp() : undefined;
  const sentry = await ctx.sentries.get(ctx, model?.ip, state.tokens, state.escalation);
  // An escalated agent's model requests go to model.escalate's endpoint: no local slot is taken.
  const releaseSlot = ctx.agentSlots && usesLocalModelSlot(ctx.config, state.escalation) ? await ctx.agentSlots.acquire(ctx.signal).catch(() => undefined) : () => undefined;
  if (!releaseSlot) return undefined;
  const identity: SandboxIdentity = { runId: ctx.runId, task: ctx.task.name, iteration };
  const agentLog = new CappedLog(path.join(ctx.dir, 'sandboxes', `i${iteration}.agent.log`), ctx.config.agent.maxOutput);
  // The agent's own stop: the loop's signal, or the disk limit.
  const stopAgent = new AbortController();
  const onLoopAbort = (): void => stopAgent.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', onLoopAbort, { once: true });
  if (ctx.signal.aborted) onLoopAbort();
  let stoppedFor: string | undefined;
  let watch: DiskWatch | undefined;
  let run: AgentRun;
  try {
    watch = await DiskWatch.start({
      dirs: [state.worktree, ctx.notesDir],
      limitBytes: ctx.config.sandbox.disk,
      baselineBytes: ctx.diskBaseline,
      onLimit: (reason) => {
        stoppedFor = reason;
        ctx.log.warn({ iteration, reason }, 'stopping the agent');
        stopAgent.abort(new Error(reason));
      },
    });
    run = await ctx.backend.runAgent(sentry, {
      ...identity,
      cmd: invocation.cmd,
      env: invocation.env,
      user: `${ctx.agentUid}:${ctx.agentUid}`,
      image: ctx.config.sandbox.image,
      binds: [
        { host: state.worktree, container: '/workspace', readOnly: false },
        // The worktree's `.git` pointer is masked: the agent never reaches the repository.
        { host: ctx.gitMask, container: '/workspace/.git', readOnly: true },
        { host: ctx.mountDir, container: LOOP_MOUNT, readOnly: true },
        { host: ctx.notesDir, container: NOTES_MOUNT, readOnly: false },
      ],
      workingDir: '/workspace',
      limits: { memoryBytes: ctx.config.sandbox.memory, cpus: ctx.config.sandbox.cpus, pids: ctx.config.sandbox.pids },
      timeoutMs: ctx.config.agent.timeout,
      signal: stopAgent.signal,
      stdout: agentLog,
      stderr: agentLog,
    });
    // Attribution needs the counters read before the next agent starts, not before verify:
    // collect while the host snapshots and verifies.
    const collecting = ctx.backend.collectAudit(sentry, identity);
    collecting.catch(() => undefined); // awaited by the caller; never an unhandled rejection meanwhile
    ctx.sentries.lastCollect = { iteration, result: collecting };
    return { run, outputDropped: agentLog.dropped, stoppedFor, collecting };
  } finally {
    watch?.stop();
    ctx.signal.removeEventListener('abort', onLoopAbort);
    releaseSlot();
    await agentLog.close();
  }
}

/** A model server that died during the iteration voids it: not the agent's failure. */
export async function modelWentDown(ctx: LoopContext): Promise<boolean> {
  return ctx.supervisor !== undefined && !(await ctx.backend.findModel());
}

// ---------------------------------------------------------------------------------------------
// snapshot

export interface SnapshotStep {
  /** The branch tip the iteration started from. */
  head: string;
  snap: Snapshot;
  /** Protected paths the agent changed: the tree has the base's entries for them. */
  violations: string[];
  /** Paths the snapshot could not take (special files, unreadable, too large...), with why. */
  skipped: Array<{ path: string; reason: string }>;
  /** Set when the worktree could not be put back to the committed tree on those paths. */
  untrusted?: string | undefined;
}

/**
 * Reads what the agent left as a tree in which every protected or rejected path has the base's
 * entry, whatever the worktree holds: what gets verified and committed can never differ from
 * the base there. Then puts those paths back in the worktree for the next iteration, after
 * taking back whatever permissions the agent removed.
 */
export async function snapshot(ctx: LoopContext, state: LoopState, steps: StepTimes = {}): Promise<SnapshotStep> {
  const head = await revParse(ctx.repo, `refs/heads/${state.branch}`);
  // removeRejected: nested .git, special files, odd names and the like leave the worktree.
  const snap = await timed(steps, 'snapshot', () => snapshotWorktree(ctx.repo, state.worktree, { keepBase: ctx.isProtected, removeRejected: true }));
  const skipped = snap.skipped.map((k) => ({ path: k.path, reason: k.reason }));
  const paths = [...new Set([...snap.violations, ...skipped.map((k) => k.path)])];
  let untrusted: string | undefined;
  if (paths.length) {
    try {
      await timed(steps, 'restore', async () => {
        for (const p of paths) await takeBackPath(state.worktree, p);
        const restored = await restorePaths(ctx.repo, state.worktree, head, paths);
        if (ctx.lend) await lendPaths(state.worktree, [...restored.restored], ctx.agentUid);
      });
    } catch (error) {
      untrusted = `could not put back ${paths.join(', ')} in the worktree: ${describe(error)}`;
      ctx.log.warn({ untrusted }, 'restore failed');
    }
  }
  return { head, snap, violations: snap.violations, skipped, untrusted };
}

// ---------------------------------------------------------------------------------------------
// verify

/** Runs the verify command in a clean container, unless the iteration is void or stopped. */
export async function verify(ctx: LoopContext, tree: string, iteration: number, skip: boolean): Promise<VerifyResult | null> {
  if (skip || ctx.signal.aborted) return null;
  return ctx.backend.runVerify(verifyOptions(ctx, tree, iteration));
}

/** The verify container's settings, the same for the baseline (iteration 0) and every iteration. */
export function verifyOptions(ctx: LoopContext, tree: string, iteration: number): VerifyOptions {
  return {
    runId: ctx.runId,
    task: ctx.task.name,
    iteration,
    image: ctx.config.verify.image ?? ctx.config.sandbox.image ?? imageRef('agent'),
    command: ctx.verifyCommand,
    // Exactly the tree that gets committed, from git objects: never the worktree's files.
    repo: ctx.repo,
    tree,
    // Kept for the run: each verify writes only what changed since the last one.
    baseDir: path.join(ctx.dir, 'verify-base'),
    timeoutMs: ctx.config.verify.timeout,
    maxCopyBytes: ctx.config.verify.maxCopy,
    limits: { memoryBytes: ctx.config.sandbox.memory, cpus: ctx.config.sandbox.cpus, pids: ctx.config.sandbox.pids },
    signal: ctx.signal,
    report: ctx.config.verify.report,
  };
}

// ---------------------------------------------------------------------------------------------
// account

/**
 * Whether the verify result is evidence of a pass: exit 0 is not enough. With a report, every
 * test that passed on the base ran and passed, none is missing or newly skipped, and some test
 * ran at all; without one, the runner did not say it ran no tests. When the base already
 * passes, an unchanged tree proves nothing (issue 7 item 5, issue 12 item 3).
 */
export function account(result: VerifyResult | null, baseline: Baseline | null, options: { unchangedFromBase: boolean }): Accounting {
  if (!result) return { verified: false, evidence: 'exit-code-only', record: null };
  const record = accountingRecord(accountTests(baseline, result, options), baseline);
  return { verified: result.passed && record.verified, evidence: record.mode === 'report' ? 'test-report' : 'exit-code-only', record };
}

// ---------------------------------------------------------------------------------------------
// review

/**
 * Asks the reviewer (review.when: on-verified) about verified work, from the host: the diff
 * from the run's base without protected paths, the verify result. Undefined when it does not
 * apply; then a loop with review on cannot end `done` on this iteration.
 */
export async function review(ctx: LoopContext, state: LoopState, iteration: number, tree: string, result: VerifyResult | null, accounting: Accounting): Promise<ReviewResult | undefined> {
  const cfg = ctx.config.review;
  if (!cfg || !reviewRequired(ctx.config) || !accounting.verified || !result || ctx.signal.aborted) return undefined;
  const diff = await reviewDiff(ctx.repo, state.baseTree, tree, ctx.isProtected, cfg.maxDiffBytes);
  // The tests the report says ran, with their outcome, when test accounting read one.
  const tests = result?.report.kind === 'ok' ? result.report.report.tests.slice(0, 500).map((t) => `${t.status}: ${t.id}`) : undefined;
  const subject = { taskText: ctx.task.text, verifyCommand: ctx.verifyCommand, verify: result, evidence: accounting.evidence, diff, tests };
  const verdict = await askReviewer({ config: cfg, subject, runId: ctx.runId, task: ctx.task.name, iteration, stateEnv: ctx.stateEnv, signal: ctx.signal });
  ctx.log.info({ iteration, verdict: verdict.verdict, gaming: verdict.gaming, attempts: verdict.attempts, diffCutBytes: verdict.diffCutBytes, cost: verdict.cost }, 'review');
  return verdict;
}

// ---------------------------------------------------------------------------------------------
// commit

/** Commits the tree when something changed or it verified; moves the worktree's index along. */
export async function commit(
  ctx: LoopContext,
  state: LoopState,
  iteration: number,
  step: SnapshotStep,
  result: VerifyResult | null,
  accounting: Accounting,
  reviewed?: ReviewResult,
): Promise<string | null> {
  if (!accounting.verified && step.snap.changed.length === 0) return null;
  const message = commitMessage({ task: ctx.task.name, runId: ctx.runId, iteration, verify: result, accounting, command: ctx.verifyCommand, review: reviewed, model: workerModel(ctx.config, state.escalation) });
  const id = await commitSnapshot(ctx.repo, state.branch, step.snap.tree, step.head, message);
  await syncWorktreeIndex(ctx.repo, state.worktree);
  return id;
}

/**
 * The worktree could not be put back on a protected or rejected path (the restore failed even
 * after taking back permissions): the next iteration must not start from it. The commit has
 * the agent's other work; the worktree is made again from the branch tip.
 */
export async function resetWorktree(ctx: LoopContext, state: LoopState): Promise<void> {
  await forceRemoveTree(state.worktree);
  await git(['worktree', 'prune'], { cwd: ctx.repo });
  const wt = await ensureTaskWorktree(ctx.repo, ctx.task.name, state.worktree);
  if (ctx.lend) {
    await lendTree(wt.dir, ctx.agentUid);
    await chmod(wt.dir, 0o777);
  }
}

// ---------------------------------------------------------------------------------------------
// the whole iteration

export interface IterationOutcome {
  record: IterationRecord;
  aborted: boolean;
  modelDown: boolean;
  verified: boolean;
  commit: string | null;
  /** The model gateway refused a request because the token budget was used up. */
  budgetExceeded: boolean;
  /** The gateway refused an escalated request: model.escalate.tokenBudget is used up. */
  escalateBudgetExceeded?: boolean;
  /** The reviewer's answer, when review is on and the iteration verified. */
  review?: ReviewResult | undefined;
}

/** Runs the steps up to the commit; the caller decides (brakes) and saves state. */
export async function runIteration(ctx: LoopContext, state: LoopState, iteration: number, feedback: string): Promise<IterationOutcome | undefined> {
  const startedAt = new Date();
  const steps: StepTimes = {};
  const invocation = await prepare(ctx, iteration, feedback);
  const agentStep = await agent(ctx, state, iteration, invocation);
  if (!agentStep) return undefined;
  const modelDown = await modelWentDown(ctx);
  const snap = await snapshot(ctx, state, steps);
  // The verify copy comes from the snapshot tree, which has the base's entries on protected
  // paths even when the worktree could not be put back: it is still sound to verify.
  const result = await verify(ctx, snap.snap.tree, iteration, ctx.signal.aborted || modelDown);
  const audit = await agentStep.collecting;
  // Metered by this run's own model gateway: exact with parallel loops and with model.endpoint.
  const tokens = audit.model.tokens;
  const accounting = account(result, ctx.baseline, { unchangedFromBase: snap.snap.tree === state.baseTree });
  const reviewed = await timed(steps, 'review', () => review(ctx, state, iteration, snap.snap.tree, result, accounting));
  const commitId = await timed(steps, 'commit', () => commit(ctx, state, iteration, snap, result, accounting, reviewed));
  if (snap.untrusted) await timed(steps, 'reset', () => resetWorktree(ctx, state));
  const record: IterationRecord = {
    iteration,
    startedAt: startedAt.toISOString(),
    endedAt: new Date().toISOString(),
    agent: {
      exitCode: agentStep.run.exitCode,
      timedOut: agentStep.run.timedOut,
      durationMs: agentStep.run.durationMs,
      outputDropped: agentStep.outputDropped,
      ...(agentStep.stoppedFor ? { stoppedFor: agentStep.stoppedFor } : {}),
    },
    tree: snap.snap.tree,
    filesChanged: snap.snap.changed.map((c) => `${c.status[0]!.toUpperCase()} ${c.path}`),
    protectedViolations: snap.violations,
    skipped: snap.skipped,
    untrusted: snap.untrusted ?? null,
    verify: result && { passed: result.passed, exitCode: result.exitCode, timedOut: result.timedOut, durationMs: result.durationMs, outputTail: result.outputTail, ...(accounting.record ? { accounting: accounting.record } : {}) },
    evidence: result ? accounting.evidence : null,
    commit: commitId,
    verified: accounting.verified,
    tokens,
    model: { promptTokens: audit.model.promptTokens, cachedTokens: audit.model.cachedTokens, completionTokens: audit.model.completionTokens, requests: audit.model.requests, denied: audit.model.denied, ...workerModel(ctx.config, state.escalation) },
    audit: { ...audit.traffic, records: audit.records.length },
    modelDown,
    ...(reviewed ? { review: reviewRecord(reviewed) } : {}),
    steps: { ...steps, ...(result ? { verifyCopy: result.copyMs, verifyRun: result.durationMs - result.copyMs } : {}) },
  };
  return { record, aborted: ctx.signal.aborted, modelDown, verified: accounting.verified, commit: commitId, budgetExceeded: audit.model.budgetExceeded, escalateBudgetExceeded: audit.model.escalateBudgetExceeded ?? false, review: reviewed };
}

