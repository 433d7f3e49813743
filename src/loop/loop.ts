// The Ralph loop: run the agent in a fresh sandbox, read what it left with hardened git,
// keep protected paths as they were, verify in a clean container, commit from the host, feed
// failures back, and stop on a brake — never on the agent's word. One iteration is the
// pipeline in iteration.ts; this file owns the run: its lock, worktree, state and end.
import { existsSync } from 'node:fs';
import { chmod, lchown, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { ConfigError, LoopboxError, describe } from '../common/errors.js';
import { newRunId } from '../common/ids.js';
import { type Logger, createLogger } from '../common/logger.js';
import { runDir, stateDir } from '../common/paths.js';
import type { Semaphore } from '../common/semaphore.js';
import type { Config } from '../config/schema.js';
import { DEFAULT_PROTECTED } from '../config/schema.js';
import type { ContainerBackend } from '../backend/backend.js';
import { DockerBackend } from '../backend/docker.js';
import { DockerClient } from '../docker/client.js';
import { ensureTaskWorktree, isDirtyRepo, matchesAny, snapshotWorktree, treeOf } from '../git/index.js';
import { MODEL_HOSTNAME } from '../model/network.js';
import type { ModelSupervisor } from '../model/supervisor.js';
import { createRun, finishRun, isRunAlive, readRun, type RunRecord } from '../runs/registry.js';
import { recoverAuditDir, resolveEndpoints } from '../sandbox/sandbox.js';
import { AGENT_UID } from '../sandbox/specs.js';
import { END_STATE_EXIT, type EndState, checkBrakes } from './brakes.js';
import { treesSize } from './disk-watch.js';
import { feedbackText } from './feedback.js';
import { type EscalationState, afterIteration, escalateApiKey } from './escalation.js';
import { voidAfterEngineLoss } from './engine.js';
import { reviewApiKey, reviewRequired } from '../review/review.js';
import { type IterationRecord, type LoopState, type ReviewTotals, addReview, appendIteration, loadState, readIterations, saveState } from './state.js';
import { type AccountingRecord, BASE_PASSES_NOTICE, type Baseline, evidenceSummary } from '../verify/accounting.js';
import { runBaseline } from '../verify/baseline.js';
import { type IterationOutcome, type LoopContext, SentryKeeper, runIteration, verifyOptions } from './iteration.js';
import { type Task, loadTask } from './task.js';
import { acquireTaskLock, legacyWorktreeDir, lendTree, taskWorktreeDir } from './workspace.js';

export { feedbackText } from './feedback.js';

export interface LoopOptions {
  repo: string;
  taskFile?: string;
  config: Config;
  runId?: string;
  /** Continue this run (its state.json) instead of starting a new one. */
  resume?: string;
  allowDirty?: boolean;
  trigger?: string;
  signal?: AbortSignal;
  onEvent?: (event: LoopEvent) => void;
  stateEnv?: NodeJS.ProcessEnv;
  /** Shared by parallel loops: at most one agent per model slot runs at a time. */
  agentSlots?: Semaphore;
  /** Shared by parallel loops: restarts a dead model server once. Default: the backend's own. */
  modelSupervisor?: ModelSupervisor;
  /**
   * Where the sentry, agents and verify containers run. `runLoop(docker, options)` uses the
   * Docker engine `docker` (DockerBackend); a cluster runner passes its own.
   */
  backend?: ContainerBackend;
}

export type LoopEvent =
  | { type: 'loop-start'; runId: string; task: string; branch: string; worktree: string; resumedAt: number }
  | { type: 'baseline'; runId: string; task: string; passes: boolean; evidence: string; notice: string | null }
  | { type: 'iteration-start'; runId: string; task: string; iteration: number }
  | { type: 'iteration-end'; runId: string; task: string; record: IterationRecord }
  | { type: 'model-down'; runId: string; task: string; iteration: number }
  | { type: 'notice'; runId: string; task: string; message: string }
  | { type: 'loop-end'; summary: LoopSummary };

export interface LoopSummary {
  runId: string;
  task: string;
  endState: EndState;
  reason: string;
  exitCode: number;
  iterations: number;
  wallMs: number;
  tokens: number;
  blocked: number;
  branch: string;
  worktree: string;
  lastCommit: string | null;
  verifiedCommit: string | null;
  runDir: string;
  /** Reviewer requests, tokens and cost over the run (review on). */
  review?: ReviewTotals | undefined;
  /** What the last verification rested on (test counts, or the exit code), and whether the base passed. */
  evidence: string;
  /** model.escalate: whether and why the run escalated, and the escalated tokens. */
  escalation?: EscalationState | undefined;
}

/** `loopbox stop RUN` writes this file in the run directory. */
export const STOP_FILE = 'stop';
/** Touching this file in the state directory stops every loop gracefully. */
export const KILL_SWITCH_FILE = 'STOP';

/** The backend a loop runs on: the one given, or the Docker engine given. */
export function loopBackend(on: DockerClient | ContainerBackend): ContainerBackend {
  return on instanceof DockerClient ? new DockerBackend(on) : on;
}

/**
 * Runs one loop to its end state. `runLoop({ ...options, backend })` runs it on any
 * ContainerBackend; `runLoop(docker, options)` on this host's Docker engine.
 *
 * Four phases, like an iteration's steps: open the session (checks, lock, run record, then the
 * start-up work that does not depend on the agent, overlapped), watch for stops, iterate until a
 * brake decides, summarize. Whatever the session started is stopped on every way out.
 */
export async function runLoop(options: LoopOptions & { backend: ContainerBackend }): Promise<LoopSummary>;
export async function runLoop(docker: DockerClient, options: LoopOptions): Promise<LoopSummary>;
export async function runLoop(first: DockerClient | (LoopOptions & { backend: ContainerBackend }), second?: LoopOptions): Promise<LoopSummary> {
  const options: LoopOptions = first instanceof DockerClient ? second! : first;
  const backend = options.backend ?? loopBackend(first as DockerClient);
  const session = await openSession(backend, options);
  const { log } = session;
  const stops = watchStops(session.dir, options.signal, options.stateEnv);
  let state: LoopState | undefined = session.previous;
  try {
    const ctx = await sessionContext(session, stops.signal);
    try {
      state = await startUp(session, ctx);
      const end = await iterate(session, ctx, state);
      state = end.state;
      const summary = summarize(session, end);
      log.info(summary, 'loop end');
      options.onEvent?.({ type: 'loop-end', summary });
      return summary;
    } finally {
      await ctx.sentries.stop().catch((error: unknown) => log.warn({ error: describe(error) }, 'sentry stop failed'));
    }
  } catch (error) {
    log.error({ error: describe(error) }, 'loop error');
    if (state) await saveState(session.dir, { ...state, endState: 'error', endReason: describe(error) }).catch(() => undefined);
    throw error;
  } finally {
    stops.dispose();
    await session.close();
  }
}

/** What a loop session holds from its opening to its end: the run, its lock and its log. */
interface Session {
  backend: ContainerBackend;
  options: LoopOptions;
  config: Config;
  verifyCommand: string[];
  repo: string;
  task: Task;
  runId: string;
  /** The run directory. */
  dir: string;
  log: Logger;
  /** The state of the run being resumed. */
  previous: LoopState | undefined;
  supervisor: ModelSupervisor | undefined;
  started: number;
  /** Gives back the run record and the task lock; idempotent. */
  close(): Promise<void>;
}

/**
 * Checks everything a loop cannot run without (bad input loses nothing), takes the task's lock
 * and writes the run record. Nothing is started yet.
 */
async function openSession(backend: ContainerBackend, options: LoopOptions): Promise<Session> {
  const { config } = options;
  const verifyCommand = checkLoopConfig(config);
  const previous = options.resume ? await loadResumable(backend, options.resume, options.stateEnv) : undefined;
  const repo = path.resolve(previous?.repo ?? options.repo);
  const taskFile = previous?.taskFile ?? options.taskFile;
  if (!taskFile) throw new ConfigError('No task file given.', [], { hint: 'loopbox run tasks/<task>.md' });
  const task = await loadTask(taskFile);
  // A resumed run continues its own branch: the repo's checkout may have moved on meanwhile.
  await checkRepoAndModel(backend, repo, config, options.allowDirty ?? previous !== undefined, options.stateEnv);
  const supervisor = config.model.endpoint ? undefined : (options.modelSupervisor ?? backend.modelSupervisor?.());

  const runId = previous?.runId ?? options.runId ?? newRunId();
  // One task, one loop: refused (exit 2) before anything of this run is written.
  const lock = await acquireTaskLock(repo, task.name, runId, options.stateEnv);
  const dir = runDir(runId, options.stateEnv);
  let record: RunRecord;
  try {
    record = await createRun({ runId, kind: 'loop', task: task.name, trigger: options.trigger ?? previous?.trigger ?? 'manual' }, options.stateEnv);
  } catch (error) {
    await lock.release();
    throw error;
  }
  const log = createLogger({ file: path.join(dir, 'loop.log'), level: 'debug' });
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await finishRun(record, options.stateEnv);
    await lock.release().catch(() => undefined);
    log.flush();
  };
  return { backend, options, config, verifyCommand, repo, task, runId, dir, log, previous, supervisor, started: Date.now(), close };
}

/**
 * This loop's own stop: the caller's signal (Ctrl+C), `loopbox stop` (a file in the run
 * directory), or the global kill-switch file a cron job can touch.
 */
function watchStops(dir: string, outer: AbortSignal | undefined, stateEnv: NodeJS.ProcessEnv | undefined): { signal: AbortSignal; dispose(): void } {
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(outer?.reason);
  outer?.addEventListener('abort', onOuterAbort, { once: true });
  if (outer?.aborted) stop.abort(outer.reason);
  const stopFiles = [path.join(dir, STOP_FILE), path.join(stateDir(stateEnv), KILL_SWITCH_FILE)];
  const watcher = setInterval(() => {
    for (const file of stopFiles) if (existsSync(file)) stop.abort(new Error(`stop requested (${path.basename(file)})`));
  }, 500);
  return {
    signal: stop.signal,
    dispose: () => {
      clearInterval(watcher);
      outer?.removeEventListener('abort', onOuterAbort);
    },
  };
}

/** The run's fixed context, after the folders a crashed session left are recovered. */
async function sessionContext(session: Session, signal: AbortSignal): Promise<LoopContext> {
  const { config, runId, task, dir, options } = session;
  // A stop request of an earlier session (loopbox stop, then --resume) is spent.
  await rm(path.join(dir, STOP_FILE), { force: true });
  const sandboxesDir = path.join(dir, 'sandboxes');
  // Sentry folders a crashed session left: what was logged after its last read belongs to
  // the iteration that was running (the one after the last recorded).
  let sentries = 0;
  for (const name of await readdir(sandboxesDir).catch(() => [] as string[])) {
    const n = /^sentry-(\d+)$/.exec(name);
    if (!n) continue;
    sentries = Math.max(sentries, Number(n[1]));
    await recoverAuditDir(path.join(sandboxesDir, name), { runId, task: task.name, iteration: (session.previous?.iteration ?? 0) + 1 }, [MODEL_HOSTNAME], options.stateEnv);
  }
  const protectedPatterns = [...DEFAULT_PROTECTED, ...config.protectedPaths];
  const agentUid = agentUidFor();
  const ctx: LoopContext = {
    config,
    runId,
    task,
    repo: session.repo,
    dir,
    log: session.log,
    signal,
    verifyCommand: session.verifyCommand,
    isProtected: (p) => matchesAny(p, protectedPatterns),
    mountDir: path.join(dir, 'mount'),
    notesDir: path.join(dir, 'notes'),
    gitMask: path.join(dir, 'git-mask'),
    agentUid,
    lend: agentUid === AGENT_UID && process.getuid?.() === 0,
    supervisor: session.supervisor,
    external: config.model.endpoint ? await externalEndpoint(config.model.endpoint) : undefined,
    agentSlots: options.agentSlots,
    backend: session.backend,
    sentries: new SentryKeeper(sandboxesDir, sentries),
    diskBaseline: 0,
    stateEnv: options.stateEnv,
    baseline: null,
    escalateKey: config.model.escalate ? escalateApiKey(config.model.escalate) : undefined,
  };
  await mkdir(path.join(ctx.mountDir, 'notes'), { recursive: true });
  await mkdir(ctx.notesDir, { recursive: true });
  await mkdir(sandboxesDir, { recursive: true });
  await writeFile(ctx.gitMask, '');
  return ctx;
}

/**
 * The start-up work that does not depend on the agent, overlapped (issue 20 item 3): the sentry
 * starts while the worktree is checked out, lent and measured and the baseline verify runs on
 * the base tree. Every branch is waited for before a failure is thrown, so nothing is still
 * starting when the caller stops what started.
 */
async function startUp(session: Session, ctx: LoopContext): Promise<LoopState> {
  const { options, repo, task, runId, dir, log, previous } = session;
  const sentry = (async () => {
    const model = ctx.supervisor ? await ctx.supervisor.ensureUp() : undefined;
    await ctx.sentries.get(ctx, model?.ip, previous?.tokens ?? 0);
  })();
  const workspace = (async () => {
    // Task worktrees live in the state directory, never in the user's checkout; one that an
    // older loopbox made in <repo>/.loopbox/worktrees is moved there (git worktree move).
    const worktreeDir = await taskWorktreeDir(repo, task.name, options.stateEnv);
    const wt = await ensureTaskWorktree(repo, task.name, worktreeDir, { legacyDir: legacyWorktreeDir(repo, task.name) });
    if (wt.movedFrom) log.info({ from: wt.movedFrom, to: wt.dir }, 'task worktree moved out of the repository');
    if (wt.movedFrom) options.onEvent?.({ type: 'notice', runId, task: task.name, message: `moved the task worktree from ${wt.movedFrom} to ${wt.dir}: task worktrees now live outside the repository` });
    let state: LoopState;
    if (previous) state = { ...previous, worktree: wt.dir, endState: undefined, endReason: undefined };
    else {
      state = {
        runId,
        task: task.name,
        taskFile: task.file,
        repo,
        branch: wt.branch,
        worktree: wt.dir,
        // A worktree written just now holds exactly the tip's tree; one kept from an earlier
        // run may hold what its agent left, which this run starts from.
        baseTree: wt.created ? await treeOf(repo, wt.head) : (await snapshotWorktree(repo, wt.dir)).tree,
        trees: [],
        iteration: 0,
        tokens: 0,
        elapsedMs: 0,
        trigger: options.trigger ?? 'manual',
      };
    }
    await writeFile(path.join(dir, previous ? `config.resumed-${Date.now()}.json` : 'config.json'), `${JSON.stringify(session.config, null, 2)}\n`);
    await saveState(dir, state);
    options.onEvent?.({ type: 'loop-start', runId, task: task.name, branch: state.branch, worktree: state.worktree, resumedAt: state.iteration });
    log.info({ runId, task: task.name, branch: state.branch, resumedAt: state.iteration }, 'loop start');
    const base = state;
    const [, baseline] = await settleAll([
      // Run as root, the agent's uid gets the worktree once per session; after that the host
      // hands back only the paths it writes itself (restores), so an iteration costs what changed.
      (async () => {
        if (ctx.lend) {
          await lendTree(base.worktree, ctx.agentUid);
          await lendTree(ctx.notesDir, ctx.agentUid);
          await lchown(ctx.notesDir, ctx.agentUid, ctx.agentUid);
          // The top stays the host's (git's ownership check), writable for the agent.
          await chmod(base.worktree, 0o777);
        }
        ctx.diskBaseline = await treesSize([base.worktree, ctx.notesDir]);
        // A worktree written just now was never read: read it once here, while the sentry
        // starts and the baseline runs, so that the first iteration's snapshot finds its stat
        // cache warm (a reused worktree was read for its base tree above).
        if (wt.created && !previous) await snapshotWorktree(repo, base.worktree);
      })(),
      // Test accounting's baseline: the verify command on the base tree, once per run, before
      // the first agent (issue 7 item 5, issue 12 item 3). It reads git objects only.
      base.baseline === undefined ? takeBaseline(ctx, base) : Promise.resolve(undefined),
    ]);
    if (baseline !== undefined) {
      state = { ...state, baseline };
      await saveState(dir, state);
      if (baseline) announceBaseline(ctx, baseline, options.onEvent);
    }
    ctx.baseline = state.baseline ?? null;
    return state;
  })();
  const [, state] = await settleAll([sentry, workspace]);
  return state;
}

/** Promise.all that waits for every promise, then throws the first failure. */
async function settleAll<T extends readonly unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

interface LoopEnd {
  state: LoopState;
  decision: { state: EndState; reason: string };
  lastCommit: string | null;
  verifiedCommit: string | null;
  lastEvidence: AccountingRecord | null;
  blocked: number;
}

/** Iterations until a brake (or a stop) decides; the state is saved after each. */
async function iterate(session: Session, ctx: LoopContext, start: LoopState): Promise<LoopEnd> {
  const { options, verifyCommand, config, runId, task, dir, log, previous, started } = session;
  const signal = ctx.signal;
  let state = start;
  const lastRecord = previous ? (await readIterations(dir)).at(-1) : undefined;
  let feedback = lastRecord ? feedbackText(lastRecord, verifyCommand, config.agent.timeout) : '';
  let lastCommit: string | null = null;
  let verifiedCommit: string | null = null;
  let lastEvidence = lastRecord?.verify?.accounting ?? null;
  let blocked = 0;
  let decision: { state: EndState; reason: string } | undefined;
  // Void iterations (engine loss) add no tree, so the iteration cap never sees them: an engine
  // that goes away in every iteration would loop for ever without this count.
  let voidInARow = 0;
  while (!decision) {
    const iteration: number = state.iteration + 1;
    options.onEvent?.({ type: 'iteration-start', runId, task: task.name, iteration });
    const iterationStarted = new Date();
    let outcome: IterationOutcome | undefined;
    try {
      outcome = await runIteration(ctx, state, iteration, feedback);
    } catch (error) {
      // The engine restarted under the iteration: void, not counted, and the loop goes on.
      const notify = (message: string): void => options.onEvent?.({ type: 'notice', runId, task: task.name, message });
      const voided = await voidAfterEngineLoss(ctx, error, iteration, iterationStarted, state.trees.at(-1) ?? state.baseTree, notify, state.escalation);
      if (!voided) throw error;
      await appendIteration(dir, voided);
      // Its tokens were spent all the same (engine.ts reads them from the gateway's records).
      const voidEscalation: EscalationState | undefined = voided.model?.escalated && state.escalation ? { ...state.escalation, tokens: state.escalation.tokens + voided.tokens } : state.escalation;
      state = { ...state, iteration, tokens: state.tokens + voided.tokens, ...(voidEscalation ? { escalation: voidEscalation } : {}), elapsedMs: (previous?.elapsedMs ?? 0) + (Date.now() - started) };
      if (config.loop.tokenBudget !== undefined && state.tokens >= config.loop.tokenBudget) decision = { state: 'timed-out-budget', reason: `token budget of ${config.loop.tokenBudget} used (${state.tokens}, with the void iteration ${iteration}'s ${voided.tokens})` };
      voidInARow += 1;
      if (!decision && config.loop.budget !== undefined && state.elapsedMs >= config.loop.budget) decision = { state: 'timed-out-budget', reason: `wall-clock budget of ${Math.round(config.loop.budget / 1000)} s used (the last iteration void: the Docker engine went away)` };
      if (!decision && voidInARow > config.loop.maxIterations) decision = { state: 'capped', reason: `${voidInARow} void iterations in a row (the Docker engine went away in each): more than the iteration cap of ${config.loop.maxIterations}` };
      options.onEvent?.({ type: 'iteration-end', runId, task: task.name, record: voided });
      if (signal.aborted) decision = { state: 'aborted', reason: describe(signal.reason ?? 'stopped') };
      if (decision) state = { ...state, endState: decision.state, endReason: decision.reason };
      await saveState(dir, state);
      continue;
    }
    if (!outcome) {
      decision = { state: 'aborted', reason: 'stopped while waiting for a model slot' };
      state = { ...state, endState: decision.state, endReason: decision.reason };
      await saveState(dir, state);
      break;
    }
    voidInARow = 0;
    const { record: iterRecord, modelDown } = outcome;
    if (modelDown) options.onEvent?.({ type: 'model-down', runId, task: task.name, iteration });
    if (outcome.commit) lastCommit = outcome.commit;
    if (outcome.verified) verifiedCommit = outcome.commit;
    if (iterRecord.verify?.accounting) lastEvidence = iterRecord.verify.accounting;
    blocked += iterRecord.audit.blockedPackets + iterRecord.audit.dnsBlocked;
    await appendIteration(dir, iterRecord);
    state = {
      ...state,
      iteration,
      // A voided iteration (model down) does not count towards the brakes.
      trees: modelDown ? state.trees : [...state.trees, iterRecord.tree],
      tokens: state.tokens + iterRecord.tokens,
      ...(iterRecord.review ? { review: addReview(state.review, iterRecord.review) } : {}),
      elapsedMs: (previous?.elapsedMs ?? 0) + (Date.now() - started),
    };
    feedback = feedbackText(iterRecord, verifyCommand, config.agent.timeout);
    log.info({ iteration, tree: iterRecord.tree, verified: outcome.verified, commit: outcome.commit, violations: iterRecord.protectedViolations, agent: iterRecord.agent }, 'iteration end');
    options.onEvent?.({ type: 'iteration-end', runId, task: task.name, record: iterRecord });
    decision = decide(config, state, outcome, signal);
    if (config.model.escalate && !outcome.aborted && !signal.aborted) {
      // model.escalate: after N failed iterations, or instead of ending stalled (escalation.ts).
      const esc = afterIteration(config.model.escalate, state.escalation, iterRecord, { stalled: decision?.state === 'stalled', escalateBudgetExceeded: outcome.escalateBudgetExceeded ?? false });
      state = { ...state, escalation: esc.state };
      if (esc.escalatedNow && decision?.state === 'stalled') decision = undefined;
      if (esc.escalatedNow || esc.wentBack) {
        const message = esc.escalatedNow ? `escalating to ${config.model.escalate.model} from iteration ${iteration + 1}: ${esc.state.reason ?? ''}` : (esc.state.reason ?? 'back to the local model');
        log.info({ iteration, escalation: esc.state }, message);
        options.onEvent?.({ type: 'notice', runId, task: task.name, message });
      }
    }
    if (decision) state = { ...state, endState: decision.state, endReason: decision.reason };
    await saveState(dir, state);
  }
  return { state, decision, lastCommit, verifiedCommit, lastEvidence, blocked };
}

function summarize(session: Session, end: LoopEnd): LoopSummary {
  const { state, decision } = end;
  return {
    runId: session.runId,
    task: session.task.name,
    endState: decision.state,
    reason: decision.reason,
    exitCode: END_STATE_EXIT[decision.state],
    iterations: state.iteration,
    wallMs: state.elapsedMs,
    tokens: state.tokens,
    blocked: end.blocked,
    branch: state.branch,
    worktree: state.worktree,
    lastCommit: end.lastCommit,
    verifiedCommit: end.verifiedCommit,
    runDir: session.dir,
    ...(state.review ? { review: state.review } : {}),
    ...(state.escalation ? { escalation: state.escalation } : {}),
    evidence: evidenceSummary(end.lastEvidence),
  };
}

/** The verify command on the base tree, from git objects like every iteration's. */
async function takeBaseline(ctx: LoopContext, state: LoopState): Promise<Baseline> {
  return runBaseline((o) => ctx.backend.runVerify(o), verifyOptions(ctx, state.baseTree, 0));
}

function announceBaseline(ctx: LoopContext, b: Baseline, onEvent: LoopOptions['onEvent']): void {
  const notice = b.passes ? BASE_PASSES_NOTICE : null;
  if (notice) ctx.log.warn({ baseline: b }, notice);
  const evidence = b.counts ? `${b.counts.passed} of ${b.counts.total} test(s) pass` : `exit code only: ${b.timedOut ? 'timed out' : `exit ${b.exitCode}`}`;
  onEvent?.({ type: 'baseline', runId: ctx.runId, task: ctx.task.name, passes: b.passes, evidence, notice });
}

/** The decide step: a stop request, a voided iteration, or the brakes. Never the agent's word. */
export function decide(config: Config, state: LoopState, outcome: IterationOutcome, signal: AbortSignal): { state: EndState; reason: string } | undefined {
  if (outcome.aborted || signal.aborted) return { state: 'aborted', reason: `${describe(signal.reason ?? 'stopped')}; work in progress committed` };
  if (outcome.modelDown) return undefined;
  // With review on, only verified work the reviewer approved may end `done`; a rejected one
  // goes on, and the other brakes (stalled, capped, budget) still end it.
  const reviewing = reviewRequired(config);
  const done = outcome.verified && (!reviewing || outcome.review?.approved === true);
  const brake = checkBrakes(
    {
      maxIterations: config.loop.maxIterations,
      noProgress: config.loop.noProgress,
      oscillationWindow: config.loop.oscillationWindow,
      budgetMs: config.loop.budget,
      tokenBudget: config.loop.tokenBudget,
    },
    { baseTree: state.baseTree, trees: state.trees, verified: done, elapsedMs: state.elapsedMs, tokens: state.tokens },
  );
  // The gateway's 429 is the budget's own word, even if a request was refused before the sums got there.
  if (outcome.budgetExceeded && brake?.state !== 'done') {
    return { state: 'timed-out-budget', reason: `token budget of ${config.loop.tokenBudget ?? '?'} used: the model gateway refused a request (${state.tokens} tokens)` };
  }
  if (brake?.state === 'done' && reviewing) return { ...brake, reason: `${brake.reason}, approved by the reviewer (${outcome.review?.model ?? '?'})` };
  return brake;
}

/** Config a loop cannot run without; returns the verify command. */
export function checkLoopConfig(config: Config): string[] {
  if (!config.verify.command) {
    throw new ConfigError('verify.command is not set.', [], {
      hint: 'A loop ends on a test the harness runs, never on the agent\'s word: set verify.command in loopbox.yaml, e.g. ["node", "--test"].',
    });
  }
  if (config.agent.type === 'command' && !config.agent.command) {
    throw new ConfigError('agent.type is "command" but agent.command is not set.', [], { hint: 'Give the agent\'s argv, e.g. ["codex", "exec", "--full-auto"].' });
  }
  // A missing key is bad input: refused before anything runs, not found after the first pass.
  if (config.review && reviewRequired(config)) reviewApiKey(config.review);
  if (config.model.escalate) escalateApiKey(config.model.escalate);
  return config.verify.command;
}

/** Checked before any loop starts, so that bad input loses nothing and says what to do. */
export async function checkRepoAndModel(on: DockerClient | ContainerBackend, repo: string, config: Config, allowDirty: boolean, env?: NodeJS.ProcessEnv): Promise<void> {
  const backend = loopBackend(on);
  checkLoopConfig(config);
  const killSwitch = path.join(stateDir(env), KILL_SWITCH_FILE);
  if (existsSync(killSwitch)) {
    throw new LoopboxError(`The kill switch ${killSwitch} exists: no loop may run.`, { hint: `Remove it (rm ${killSwitch}) to allow loops again.` });
  }
  if (!allowDirty && (await isDirtyRepo(repo))) {
    throw new ConfigError(`${repo} has uncommitted changes; the task branch starts from the last commit and would not include them.`, [], {
      hint: 'Commit or stash them first, or pass --allow-dirty.',
    });
  }
  if (!config.model.endpoint && !(await backend.findModel())) {
    throw new LoopboxError('No model server is running.', { hint: 'Start one with `loopbox model up` (or set model.endpoint to an OpenAI-compatible server).' });
  }
  // Images of the user's own (loopbox builds its default with both tools).
  for (const image of new Set([config.sandbox.image, config.verify.image].filter((i): i is string => i !== undefined))) await backend.checkImage(image);
}

/** A run that may be resumed: it exists, is not alive, and did not end by a brake or `done`. */
async function loadResumable(backend: ContainerBackend, runId: string, env?: NodeJS.ProcessEnv): Promise<LoopState> {
  const dir = runDir(runId, env);
  const state = await loadState(dir);
  if (!state) throw new ConfigError(`No loop state for run ${runId}.`, [], { hint: `Only loop runs can be resumed; run ids are the folders under ${path.dirname(dir)}.` });
  if (isRunAlive(await readRun(runId, env))) throw new ConfigError(`Run ${runId} is still running.`, [], { hint: 'Stop it first (loopbox stop RUN), or wait for it.' });
  if (state.endState && state.endState !== 'aborted' && state.endState !== 'error') {
    throw new ConfigError(`Run ${runId} already ended: ${state.endState} (${state.endReason ?? ''}).`, [], {
      hint: `Start a new run on the same task: it continues the branch ${state.branch}.`,
    });
  }
  // Whatever the crashed process left (containers of its last iteration) goes first.
  await backend.removeRun(runId);
  return state;
}

function agentUidFor(): number {
  const uid = process.getuid?.();
  return uid === undefined || uid === 0 ? AGENT_UID : uid;
}

/** `model.endpoint` resolved on the host; the sentry answers its host name with that address. */
async function externalEndpoint(url: string): Promise<{ ip: string; port: number; names: string[] }> {
  const u = new URL(url);
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const [resolved] = await resolveEndpoints([`${host.includes(':') ? `[${host}]` : host}:${port}`]);
  const ip = resolved!.slice(0, resolved!.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  return { ip, port, names: isIP(host) ? [] : [host] };
}
