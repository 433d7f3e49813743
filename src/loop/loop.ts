// The Ralph loop: run the agent in a fresh sandbox, read what it left with hardened git,
// revert protected paths, verify in a clean container, commit from the host, feed failures
// back, and stop on a brake — never on the agent's word.
import { createWriteStream, existsSync } from 'node:fs';
import { chown, lstat, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, LoopboxError, describe } from '../common/errors.js';
import { newRunId } from '../common/ids.js';
import { createLogger } from '../common/logger.js';
import { runDir, stateDir } from '../common/paths.js';
import { Semaphore } from '../common/semaphore.js';
import { ModelSupervisor } from '../model/supervisor.js';
import type { Config } from '../config/schema.js';
import { DEFAULT_PROTECTED } from '../config/schema.js';
import type { DockerClient } from '../docker/client.js';
import { commitSnapshot, ensureTaskWorktree, isDirtyRepo, matchesAny, restorePaths, revParse, snapshotWorktree, syncWorktreeIndex } from '../git/index.js';
import { imageRef } from '../images/catalog.js';
import { MODEL_HOSTNAME, findModelServer } from '../model/network.js';
import { readTokenTotals } from '../model/server.js';
import { createRun, finishRun, isRunAlive, readRun, type RunRecord } from '../runs/registry.js';
import { managedFilter } from '../docker/labels.js';
import { isIP } from 'node:net';
import { Sentry, recoverAuditDir, resolveEndpoints, runAgent } from '../sandbox/sandbox.js';
import { AGENT_UID } from '../sandbox/specs.js';
import { runVerify, type VerifyOptions, type VerifyResult } from '../verify/verify.js';
import { type AccountingRecord, BASE_PASSES_NOTICE, account, accountingRecord, evidenceSummary, evidenceTrailers } from '../verify/accounting.js';
import { runBaseline } from '../verify/baseline.js';
import { LOOP_MOUNT, NOTES_MOUNT, agentInvocation } from './agents.js';
import { END_STATE_EXIT, type EndState, checkBrakes } from './brakes.js';
import { type IterationRecord, type LoopState, appendIteration, loadState, readIterations, saveState } from './state.js';
import { loadTask } from './task.js';

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
  /** Shared by parallel loops: restarts a dead model server once. */
  modelSupervisor?: ModelSupervisor;
}

export type LoopEvent =
  | { type: 'loop-start'; runId: string; task: string; branch: string; worktree: string; resumedAt: number }
  | { type: 'baseline'; runId: string; task: string; passes: boolean; evidence: string; notice: string | null }
  | { type: 'iteration-start'; runId: string; task: string; iteration: number }
  | { type: 'iteration-end'; runId: string; task: string; record: IterationRecord }
  | { type: 'model-down'; runId: string; task: string; iteration: number }
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
  /** What the last verification rested on (test report or exit code), and whether the base passed. */
  evidence: string;
}

const AUTHOR = { name: 'loopbox', email: 'loopbox@localhost' };
/** `loopbox stop RUN` writes this file in the run directory. */
export const STOP_FILE = 'stop';
/** Touching this file in the state directory stops every loop gracefully. */
export const KILL_SWITCH_FILE = 'STOP';

export async function runLoop(docker: DockerClient, options: LoopOptions): Promise<LoopSummary> {
  const { config } = options;
  const verifyCommand = checkLoopConfig(config);
  const previous = options.resume ? await loadResumable(docker, options.resume, options.stateEnv) : undefined;
  const repo = path.resolve(previous?.repo ?? options.repo);
  const taskFile = previous?.taskFile ?? options.taskFile;
  if (!taskFile) throw new ConfigError('No task file given.', [], { hint: 'loopbox run tasks/<task>.md' });
  const task = await loadTask(taskFile);
  // A resumed run continues its own branch: the repo's checkout may have moved on meanwhile.
  await checkRepoAndModel(docker, repo, config, options.allowDirty ?? previous !== undefined, options.stateEnv);
  const supervisor = config.model.endpoint ? undefined : (options.modelSupervisor ?? new ModelSupervisor(docker));

  const runId = previous?.runId ?? options.runId ?? newRunId();
  const dir = runDir(runId, options.stateEnv);
  const record: RunRecord = await createRun({ runId, kind: 'loop', task: task.name, trigger: options.trigger ?? previous?.trigger ?? 'manual' }, options.stateEnv);
  const log = createLogger({ file: path.join(dir, 'loop.log'), level: 'debug' });
  const started = Date.now();
  let state: LoopState | undefined = previous;
  // This loop's own stop: the caller's signal (Ctrl+C), `loopbox stop` (a file in the run
  // directory), or the global kill-switch file a cron job can touch.
  const stop = new AbortController();
  const onOuterAbort = (): void => stop.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  if (options.signal?.aborted) stop.abort(options.signal.reason);
  const stopFiles = [path.join(dir, STOP_FILE), path.join(stateDir(options.stateEnv), KILL_SWITCH_FILE)];
  const watcher = setInterval(() => {
    for (const file of stopFiles) if (existsSync(file)) stop.abort(new Error(`stop requested (${path.basename(file)})`));
  }, 500);
  const signal = stop.signal;
  try {
    const worktreeDir = previous?.worktree ?? path.join(repo, '.loopbox', 'worktrees', task.name);
    const wt = await ensureTaskWorktree(repo, task.name, worktreeDir);
    if (state) state = { ...state, endState: undefined, endReason: undefined };
    state ??= {
      runId,
      task: task.name,
      taskFile: task.file,
      repo,
      branch: wt.branch,
      worktree: wt.dir,
      baseTree: (await snapshotWorktree(repo, wt.dir)).tree,
      trees: [],
      iteration: 0,
      tokens: 0,
      elapsedMs: 0,
      trigger: options.trigger ?? 'manual',
    };
    await writeFile(path.join(dir, previous ? `config.resumed-${Date.now()}.json` : 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    await saveState(dir, state);
    options.onEvent?.({ type: 'loop-start', runId, task: task.name, branch: state.branch, worktree: state.worktree, resumedAt: state.iteration });
    log.info({ runId, task: task.name, branch: state.branch, resumedAt: state.iteration }, 'loop start');

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
      await recoverAuditDir(path.join(sandboxesDir, name), { runId, task: task.name, iteration: state.iteration + 1 }, [MODEL_HOSTNAME], options.stateEnv);
    }
    const mountDir = path.join(dir, 'mount');
    const notesDir = path.join(dir, 'notes');
    const gitMask = path.join(dir, 'git-mask');
    await mkdir(path.join(mountDir, 'notes'), { recursive: true });
    await mkdir(notesDir, { recursive: true });
    await mkdir(path.join(dir, 'sandboxes'), { recursive: true });
    await writeFile(gitMask, '');
    const agentUid = agentUidFor();
    const external = config.model.endpoint ? await externalEndpoint(config.model.endpoint) : undefined;
    const protectedPatterns = [...DEFAULT_PROTECTED, ...config.protectedPaths];
    const verifyBase = (identity: { iteration: number }): VerifyOptions => ({
      runId,
      task: task.name,
      ...identity,
      image: config.verify.image ?? config.sandbox.image ?? imageRef('agent'),
      command: verifyCommand,
      worktree: state!.worktree,
      timeoutMs: config.verify.timeout,
      limits: { memoryBytes: config.sandbox.memory, cpus: config.sandbox.cpus, pids: config.sandbox.pids },
      signal,
      report: config.verify.report,
    });
    // Test accounting's baseline: the verify command on the base tree, once per run (issue 7
    // item 5). Only while the worktree still is the base tree (a run resumed after an iteration
    // that had none goes on without one).
    if (state.baseline === undefined) {
      const atBase = (await snapshotWorktree(repo, state.worktree)).tree === state.baseTree;
      state = { ...state, baseline: atBase ? await runBaseline(docker, verifyBase({ iteration: 0 })) : null };
      await saveState(dir, state);
    }
    if (state.baseline && state.iteration === 0) {
      const b = state.baseline;
      const notice = b.passes ? BASE_PASSES_NOTICE : null;
      if (notice) log.warn({ baseline: b }, notice);
      const evidence = b.counts ? `${b.counts.passed} of ${b.counts.total} test(s) pass` : `exit code only: ${b.timedOut ? 'timed out' : `exit ${b.exitCode}`}`;
      options.onEvent?.({ type: 'baseline', runId, task: task.name, passes: b.passes, evidence, notice });
    }
    const baseline = state.baseline ?? null;
    let lastEvidence: AccountingRecord | null = null;
    const lastRecord = previous ? (await readIterations(dir)).at(-1) : undefined;
    let feedback = lastRecord ? feedbackText(lastRecord, verifyCommand, config.agent.timeout) : '';
    let lastCommit: string | null = null;
    let verifiedCommit: string | null = null;
    let blocked = 0;
    let decision: { state: EndState; reason: string } | undefined;
    let sentry: Sentry | undefined;
    try {

      while (!decision) {
        const iteration: number = state.iteration + 1;
        const model = supervisor ? await supervisor.ensureUp() : undefined;
        options.onEvent?.({ type: 'iteration-start', runId, task: task.name, iteration });
        const iterStart = new Date();
        const invocation = agentInvocation(config, iteration);
        await writeFile(path.join(mountDir, 'task.md'), task.text);
        await writeFile(path.join(mountDir, 'feedback.md'), feedback || 'No feedback yet: this is the first iteration.\n');
        for (const [name, content] of Object.entries(invocation.files)) await writeFile(path.join(mountDir, name), content);
        // Run as root, the host lends the worktree to the agent's uid for the iteration and takes
        // it back after, so that git (safe.directory) and the user see their own files between.
        const lend = agentUid === AGENT_UID && process.getuid?.() === 0;
        if (lend) {
          await chownTree(state.worktree, agentUid);
          await chownTree(notesDir, agentUid);
        }
        const agentLog = createWriteStream(path.join(dir, 'sandboxes', `i${iteration}.agent.log`));
        const tokensBefore = model ? readTokenTotals(docker, model) : Promise.resolve(undefined);
        // One sentry per run; a new one when the model server came back at another address.
        if (sentry && model && sentry.modelIp !== model.ip) {
          await sentry.stop();
          sentry = undefined;
        }
        sentry ??= await Sentry.start(docker, {
          runId,
          task: task.name,
          auditDir: path.join(dir, 'sandboxes', `sentry-${(sentries += 1)}`),
          allow: config.sandbox.allow,
          modelEndpoint: external,
          logger: log,
          stateEnv: options.stateEnv,
        });
        const releaseSlot = options.agentSlots ? await options.agentSlots.acquire(signal).catch(() => undefined) : () => undefined;
        if (!releaseSlot) {
          agentLog.end();
          decision = { state: 'aborted', reason: 'stopped while waiting for a model slot' };
          state = { ...state, endState: decision.state, endReason: decision.reason };
          await saveState(dir, state);
          break;
        }
        const identity = { runId, task: task.name, iteration };
        // The agent must not reach the model before the "before" count is taken.
        const before = await tokensBefore;
        const agentRun = await runAgent(docker, sentry, {
          ...identity,
          cmd: invocation.cmd,
          env: invocation.env,
          user: `${agentUid}:${agentUid}`,
          image: config.sandbox.image,
          binds: [
            { host: state.worktree, container: '/workspace', readOnly: false },
            // The worktree's `.git` pointer is masked: the agent never reaches the repository.
            { host: gitMask, container: '/workspace/.git', readOnly: true },
            { host: mountDir, container: LOOP_MOUNT, readOnly: true },
            { host: notesDir, container: NOTES_MOUNT, readOnly: false },
          ],
          workingDir: '/workspace',
          limits: { memoryBytes: config.sandbox.memory, cpus: config.sandbox.cpus, pids: config.sandbox.pids },
          timeoutMs: config.agent.timeout,
          signal,
          stdout: agentLog,
          stderr: agentLog,
        }).finally(() => {
          releaseSlot();
          agentLog.end();
        });
        const sandbox = agentRun;
        // Attribution needs the counters read before the next agent starts, not before verify:
        // collect while the host snapshots and verifies.
        const collecting = sentry.collect(identity);
        collecting.catch(() => undefined); // awaited below; never an unhandled rejection meanwhile
        // A model server that died during the iteration voids it: not the agent's failure.
        const modelDown = supervisor !== undefined && !(await findModelServer(docker));
        if (modelDown) options.onEvent?.({ type: 'model-down', runId, task: task.name, iteration });
        if (lend) {
          await chownTree(state.worktree, 0);
          await chownTree(notesDir, 0);
        }
        // Read while the host snapshots and verifies: verification never talks to the model.
        const tokensAfter = model && !modelDown ? readTokenTotals(docker, model) : Promise.resolve(undefined);

        // Read what the agent left; put protected paths back before anything else sees them.
        const head = await branchHead(repo, state.branch);
        let snap = await snapshotWorktree(repo, state.worktree);
        const violations = snap.changed.map((c) => c.path).filter((p) => matchesAny(p, protectedPatterns));
        // Files the snapshot cannot take (too big, FIFOs, names git reserves) are put back too,
        // so that what is verified is exactly what is committed.
        const rejected = snap.skipped.map((k) => k.path);
        let untrusted: string | undefined;
        if (violations.length || rejected.length) {
          try {
            await restorePaths(repo, state.worktree, head, [...violations, ...rejected]);
          } catch (error) {
            untrusted = `could not put back ${[...violations, ...rejected].join(', ')}: ${describe(error)}`;
          }
          snap = await snapshotWorktree(repo, state.worktree);
          if (snap.skipped.length) untrusted ??= `the worktree still holds files that cannot be committed: ${snap.skipped.map((k) => k.path).join(', ')}`;
        }
        let verify: VerifyResult | null = null;
        if (untrusted) log.warn({ iteration, untrusted }, 'not verifying');
        if (!sandbox.aborted && !modelDown && !untrusted) {
          verify = await runVerify(docker, verifyBase({ iteration }));
        }
        // Exit code 0 is not enough: every base test ran and passed, and some test ran at all.
        const evidence = verify && accountingRecord(account(baseline, verify, { unchangedFromBase: snap.tree === state.baseTree }), baseline);
        if (evidence) lastEvidence = evidence;
        const [after, audit] = await Promise.all([tokensAfter, collecting]);
        blocked += audit.traffic.blockedPackets + audit.traffic.dnsBlocked;
        const tokens = before !== undefined && after !== undefined ? Math.max(0, after - before) : 0;
        const verified = verify?.passed === true && evidence?.verified === true;
        let commit: string | null = null;
        if (verified || snap.changed.length > 0) {
          commit = await commitSnapshot(repo, state.branch, snap.tree, head, commitMessage(task.name, runId, iteration, verify, verifyCommand, evidence), AUTHOR);
          await syncWorktreeIndex(repo, state.worktree);
          lastCommit = commit;
          if (verified) verifiedCommit = commit;
        }
        const iterRecord: IterationRecord = {
          iteration,
          startedAt: iterStart.toISOString(),
          endedAt: new Date().toISOString(),
          agent: { exitCode: sandbox.exitCode, timedOut: sandbox.timedOut, durationMs: sandbox.durationMs },
          tree: snap.tree,
          filesChanged: snap.changed.map((c) => `${c.status[0]!.toUpperCase()} ${c.path}`),
          protectedViolations: violations,
          skipped: rejected.map((p) => ({ path: p, reason: snap.skipped.find((k) => k.path === p)?.reason ?? 'rejected' })),
          untrusted: untrusted ?? null,
          verify: verify && { passed: verify.passed, exitCode: verify.exitCode, timedOut: verify.timedOut, durationMs: verify.durationMs, outputTail: verify.outputTail, accounting: evidence! },
          commit,
          verified,
          tokens,
          audit: { ...audit.traffic, records: audit.records.length },
          modelDown,
        };
        await appendIteration(dir, iterRecord);
        state = {
          ...state,
          iteration,
          // A voided iteration (model down) does not count towards the brakes.
          trees: modelDown ? state.trees : [...state.trees, snap.tree],
          tokens: state.tokens + tokens,
          elapsedMs: (previous?.elapsedMs ?? 0) + (Date.now() - started),
        };
        feedback = feedbackText(iterRecord, verifyCommand, config.agent.timeout);
        log.info({ iteration, tree: snap.tree, verified, commit, violations, agent: iterRecord.agent }, 'iteration end');
        options.onEvent?.({ type: 'iteration-end', runId, task: task.name, record: iterRecord });
        if (sandbox.aborted || signal.aborted) decision = { state: 'aborted', reason: `${describe(signal.reason ?? 'stopped')}; work in progress committed` };
        else if (modelDown) decision = undefined;
        else {
          decision = checkBrakes(
            {
              maxIterations: config.loop.maxIterations,
              noProgress: config.loop.noProgress,
              oscillationWindow: config.loop.oscillationWindow,
              budgetMs: config.loop.budget,
              tokenBudget: config.loop.tokenBudget,
            },
            { baseTree: state.baseTree, trees: state.trees, verified, elapsedMs: state.elapsedMs, tokens: state.tokens },
          );
        }
        if (decision) state = { ...state, endState: decision.state, endReason: decision.reason };
        await saveState(dir, state);
      }
    } finally {
      await sentry?.stop();
    }
    const summary: LoopSummary = {
      runId,
      task: task.name,
      endState: decision.state,
      reason: decision.reason,
      exitCode: END_STATE_EXIT[decision.state],
      iterations: state.iteration,
      wallMs: state.elapsedMs,
      tokens: state.tokens,
      blocked,
      branch: state.branch,
      worktree: state.worktree,
      lastCommit,
      verifiedCommit,
      runDir: dir,
      evidence: evidenceSummary(lastEvidence),
    };
    log.info(summary, 'loop end');
    options.onEvent?.({ type: 'loop-end', summary });
    return summary;
  } catch (error) {
    log.error({ error: describe(error) }, 'loop error');
    if (state) await saveState(dir, { ...state, endState: 'error', endReason: describe(error) }).catch(() => undefined);
    throw error;
  } finally {
    clearInterval(watcher);
    options.signal?.removeEventListener('abort', onOuterAbort);
    await finishRun(record, options.stateEnv);
    log.flush();
  }
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
  return config.verify.command;
}

/** Checked before any loop starts, so that bad input loses nothing and says what to do. */
export async function checkRepoAndModel(docker: DockerClient, repo: string, config: Config, allowDirty: boolean, env?: NodeJS.ProcessEnv): Promise<void> {
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
  if (!config.model.endpoint && !(await findModelServer(docker))) {
    throw new LoopboxError('No model server is running.', { hint: 'Start one with `loopbox model up` (or set model.endpoint to an OpenAI-compatible server).' });
  }
}

/** A run that may be resumed: it exists, is not alive, and did not end by a brake or `done`. */
async function loadResumable(docker: DockerClient, runId: string, env?: NodeJS.ProcessEnv): Promise<LoopState> {
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
  for (const r of await docker.listManaged(managedFilter(runId))) if (r.kind === 'container') await docker.remove(r.id);
  return state;
}

function commitMessage(task: string, runId: string, iteration: number, verify: VerifyResult | null, command: string[], evidence: AccountingRecord | null): string {
  const ok = verify?.passed === true && evidence?.verified === true;
  const status = ok ? 'verified' : verify?.passed ? 'wip (verify exit 0, not accepted)' : verify ? `wip (verify ${verify.timedOut ? 'timed out' : `exit ${verify.exitCode}`})` : 'wip (not verified)';
  return [
    `loopbox(${task}): iteration ${iteration} ${status}`,
    '',
    `Loopbox-Run: ${runId}`,
    `Loopbox-Iteration: ${iteration}`,
    `Loopbox-Verified: ${ok ? 'yes' : 'no'}`,
    `Loopbox-Verify-Command: ${JSON.stringify(command)}`,
    ...evidenceTrailers(evidence),
  ].join('\n');
}

/** What the next iteration reads in /loopbox/feedback.md. */
export function feedbackText(record: IterationRecord, command: string[], agentTimeoutMs: number): string {
  const lines = [`# Feedback from iteration ${record.iteration}`, ''];
  if (record.agent.timedOut) lines.push(`- The agent was stopped after its time limit (${Math.round(agentTimeoutMs / 1000)} s).`);
  if (record.protectedViolations.length) {
    lines.push(`- These paths are protected; your changes to them were reverted: ${record.protectedViolations.join(', ')}`);
  }
  if (record.skipped.length) {
    lines.push(`- These files cannot be committed and were put back or removed: ${record.skipped.map((k) => `${k.path} (${k.reason})`).join(', ')}`);
  }
  if (record.untrusted) lines.push(`- Not verified: ${record.untrusted}`);
  if (!record.filesChanged.length) lines.push('- You changed no files in this iteration.');
  if (record.verify?.passed && record.verify.accounting && !record.verify.accounting.verified) {
    lines.push(`- Verification \`${command.join(' ')}\` exited 0 but is not accepted:`, ...record.verify.accounting.reasons.map((r) => `  - ${r}`));
  } else if (record.verify) {
    lines.push(
      record.verify.passed
        ? `- Verification \`${command.join(' ')}\` passed.`
        : `- Verification \`${command.join(' ')}\` failed (${record.verify.timedOut ? 'timed out' : `exit code ${record.verify.exitCode}`}). Its last output lines:`,
    );
  }
  if (record.verify && !record.verified) lines.push('', '```', record.verify.outputTail.trimEnd(), '```');
  return `${lines.join('\n')}\n`;
}

function agentUidFor(): number {
  const uid = process.getuid?.();
  return uid === undefined || uid === 0 ? AGENT_UID : uid;
}

/** Gives the agent's uid ownership of the tree it may edit, without following links. */
async function chownTree(dir: string, uid: number, top = true): Promise<void> {
  const st = await lstat(dir);
  if (st.uid !== uid) await chown(dir, uid, uid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (top && entry.name === '.git') continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(full, uid, false);
    else if (entry.isFile()) {
      if ((await lstat(full)).uid !== uid) await chown(full, uid, uid);
    }
  }
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

function branchHead(repo: string, branch: string): Promise<string> {
  return revParse(repo, `refs/heads/${branch}`);
}
