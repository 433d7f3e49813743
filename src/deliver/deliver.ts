// After a loop has ended (its state saved, its lock released): push, pull request, notify. One
// call per run from the runner; it never throws and never touches the run's state, worktree or
// branch. What happened is written to `<run dir>/delivery.json` (the digest reads it) and logged
// to the run's loop.log; failures also come back as notices for the terminal.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, LoopboxError, describe } from '../common/errors.js';
import { createLogger } from '../common/logger.js';
import { runDir } from '../common/paths.js';
import type { Config } from '../config/schema.js';
import type { LoopSummary } from '../loop/loop.js';
import { loadState, readIterations } from '../loop/state.js';
import { writeJsonAtomic } from '../runs/registry.js';
import { type NotifyEvent, type NotifyResult, type NotifyRun, notify, notifyBody, notifySecret } from './notify.js';
import { type GitHubTransport, GH_INSTALL_HINT, ghInstalled, ghTransport, githubRepoOf, openOrUpdatePullRequest } from './pull-request.js';
import { pushRun } from './push.js';

export const DELIVERY_FILE = 'delivery.json';

export interface PushRecord {
  status: 'pushed' | 'up-to-date' | 'skipped' | 'failed' | 'cancelled';
  remote?: string;
  url?: string;
  branch?: string;
  commit?: string;
  verified?: boolean;
  base?: string | null;
  reason?: string;
  error?: string;
  hint?: string;
}

export interface PullRequestRecord {
  status: 'opened' | 'updated' | 'skipped' | 'failed' | 'cancelled';
  url?: string;
  number?: number;
  reason?: string;
  error?: string;
  hint?: string;
}

/** `<run dir>/delivery.json`. */
export interface DeliveryRecord {
  at: string;
  push: PushRecord | null;
  pullRequest: PullRequestRecord | null;
  notify: { event: NotifyEvent; results: NotifyResult[] } | null;
  /** Set when the run's stop signal (Ctrl+C) cut delivery short: why, and the steps it cut. */
  cancelled?: { reason: string; steps: Array<'push' | 'pullRequest' | 'notify'> };
}

export interface DeliverOptions {
  repo: string;
  config: Config;
  version: string;
  stateEnv?: NodeJS.ProcessEnv | undefined;
  /** false: the caller notifies later for a batch (a night of `schedule`). */
  notify?: boolean;
  onNotice?: (message: string) => void;
  /** The GitHub transport; default `gh api` for the remote's host. */
  github?: (host: string) => GitHubTransport;
  /** First notify backoff (tests). */
  backoffMs?: number;
  /**
   * The run's stop (Ctrl+C): a step in flight is cut (git and gh killed, the webhook request
   * aborted), no retry or later step starts, and delivery.json says `cancelled`.
   */
  signal?: AbortSignal | undefined;
}

/** Is anything to do after a loop? */
export function deliveryConfigured(config: Config): boolean {
  return config.loop.push !== undefined || config.loop.pullRequest || config.notify !== undefined;
}

/** Checked before any loop starts (bad input loses nothing): the notify secret, gh for pull requests. */
export async function checkDeliveryConfig(config: Config, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (config.notify) {
    if (!config.notify.webhook && !config.notify.command) throw new ConfigError('notify: has neither webhook nor command.', [], { hint: 'Set notify.webhook: https://… or notify.command: ["…"] (docs/notify.md), or remove notify:.' });
    notifySecret(config.notify, env);
  }
  if (config.loop.pullRequest) {
    if (!config.loop.push) throw new ConfigError('loop.pullRequest is on but loop.push is not set: a pull request needs a pushed branch.', [], { hint: 'Add loop.push: { remote: origin } (docs/configuration.md).' });
    if (!(await ghInstalled())) throw new ConfigError('loop.pullRequest is on but the GitHub CLI (gh) is not installed.', [], { hint: GH_INSTALL_HINT });
  }
}

/** A run a person should look at in the morning. */
export function needsHuman(endState: string, reviewRejected: boolean, deliveryFailed: boolean): boolean {
  return endState === 'error' || endState === 'stalled' || endState === 'capped' || endState === 'timed-out-budget' || reviewRejected || deliveryFailed;
}

export async function readDelivery(dir: string): Promise<DeliveryRecord | null> {
  const file = path.join(dir, DELIVERY_FILE);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(await readFile(file, 'utf8')) as DeliveryRecord;
  } catch {
    return null;
  }
}

function failure(error: unknown): { error: string; hint?: string } {
  return { error: describe(error), ...(error instanceof LoopboxError && error.hint ? { hint: error.hint } : {}) };
}

/** What the notification and the PR say about one run, from its summary and run directory. */
export async function runFacts(summary: LoopSummary, delivery: DeliveryRecord | null): Promise<NotifyRun & { basePasses: boolean | null; review: string | null }> {
  const state = await loadState(summary.runDir);
  const iterations = await readIterations(summary.runDir);
  const lastReview = [...iterations].reverse().find((i) => i.review)?.review;
  const reviewRejected = lastReview !== undefined && lastReview.verdict !== 'approve' && summary.endState !== 'done';
  const push = delivery?.push ?? null;
  const pr = delivery?.pullRequest ?? null;
  return {
    runId: summary.runId,
    task: summary.task,
    endState: summary.endState,
    reason: summary.reason,
    exitCode: summary.exitCode,
    trigger: state?.trigger ?? 'manual',
    iterations: summary.iterations,
    wallMs: summary.wallMs,
    tokens: summary.tokens,
    blocked: summary.blocked,
    evidence: summary.evidence,
    branch: summary.branch,
    verifiedCommit: summary.verifiedCommit,
    lastCommit: summary.lastCommit,
    push: push ? { status: push.status, ...(push.remote ? { remote: push.remote } : {}), ...(push.branch ? { branch: push.branch } : {}), ...(push.commit ? { commit: push.commit } : {}), ...(push.error ? { error: push.error } : {}) } : null,
    pullRequest: pr ? { status: pr.status, ...(pr.url ? { url: pr.url } : {}), ...(pr.number ? { number: pr.number } : {}), ...(pr.error ? { error: pr.error } : {}) } : null,
    report: path.join(summary.runDir, 'report.html'),
    needsHuman: needsHuman(summary.endState, reviewRejected, push?.status === 'failed' || pr?.status === 'failed'),
    basePasses: state?.baseline ? state.baseline.passes : null,
    review: lastReview ? `${lastReview.verdict} by ${lastReview.model}${lastReview.reasons.length ? `: ${lastReview.reasons.join('; ')}` : ''}` : null,
  };
}

/** Push, then the pull request, then (unless batched) notify; records and logs each. Never throws. */
export async function deliverRun(summary: LoopSummary, options: DeliverOptions): Promise<DeliveryRecord> {
  const { config } = options;
  const dir = summary.runDir || runDir(summary.runId, options.stateEnv);
  const log = createLogger({ file: path.join(dir, 'loop.log'), level: 'info' });
  const notice = (message: string): void => options.onNotice?.(message);
  const record: DeliveryRecord = { at: new Date().toISOString(), push: null, pullRequest: null, notify: null };
  const { signal } = options;
  const cutSteps: Array<'push' | 'pullRequest' | 'notify'> = [];
  const stopReason = (): string => `the run was stopped (${describe(signal?.reason ?? 'aborted')})`;
  const push = config.loop.push;
  if (push && signal?.aborted) {
    record.push = { status: 'cancelled', remote: push.remote, reason: stopReason() };
    cutSteps.push('push');
  } else if (push) {
    try {
      // A resumed run works on the repository its state names, whatever --repo says now.
      const repo = (await loadState(dir))?.repo ?? options.repo;
      const out = await pushRun({ repo, task: summary.task, runId: summary.runId, endState: summary.endState, verifiedCommit: summary.verifiedCommit, lastCommit: summary.lastCommit, localBranch: summary.branch, config: push, stateEnv: options.stateEnv, signal });
      record.push = out.status === 'skipped' ? { status: 'skipped', reason: out.reason } : { ...out };
      log.info({ push: record.push }, 'push');
      if (out.status === 'pushed') notice(`pushed ${out.commit.slice(0, 12)} to ${out.branch} on ${out.remote}${out.verified ? '' : ' (unverified work)'}`);
    } catch (error) {
      if (signal?.aborted) {
        record.push = { status: 'cancelled', remote: push.remote, reason: stopReason(), ...failure(error) };
        cutSteps.push('push');
        log.warn({ push: record.push }, 'push cancelled');
        notice('push cancelled: the run was stopped; push the local branch later with `git push`');
      } else {
        record.push = { status: 'failed', remote: push.remote, ...failure(error) };
        log.error({ push: record.push }, 'push failed');
        notice(`push failed: ${describe(error).split('\n')[0] ?? ''}`);
      }
    }
  }
  if (config.loop.pullRequest && signal?.aborted) {
    record.pullRequest = { status: 'cancelled', reason: stopReason() };
    cutSteps.push('pullRequest');
    log.info({ pullRequest: record.pullRequest }, 'pull request');
  } else if (config.loop.pullRequest) {
    const pushed = record.push;
    if (!pushed || (pushed.status !== 'pushed' && pushed.status !== 'up-to-date') || !pushed.url || !pushed.branch) {
      record.pullRequest = { status: 'skipped', reason: pushed ? `nothing was pushed (${pushed.status}${pushed.reason ? `: ${pushed.reason}` : ''})` : 'loop.push is not set' };
    } else {
      const repo = githubRepoOf(pushed.url);
      if (!repo) {
        record.pullRequest = { status: 'skipped', reason: `the remote ${pushed.url} is not a GitHub repository` };
      } else {
        try {
          const facts = await runFacts(summary, record);
          const send = (options.github ?? ((host: string) => ghTransport(host, undefined, signal)))(repo.host);
          const pr = await openOrUpdatePullRequest(send, repo, pushed.branch, pushed.base ?? 'main', { ...facts, report: facts.report });
          record.pullRequest = { status: pr.status, url: pr.url, number: pr.number };
          notice(`pull request ${pr.status}: ${pr.url}`);
        } catch (error) {
          if (signal?.aborted) {
            record.pullRequest = { status: 'cancelled', reason: stopReason(), ...failure(error) };
            cutSteps.push('pullRequest');
          } else {
            record.pullRequest = { status: 'failed', ...failure(error) };
            notice(`pull request failed: ${describe(error).split('\n')[0] ?? ''}`);
          }
        }
      }
    }
    log.info({ pullRequest: record.pullRequest }, 'pull request');
  }
  if (config.notify && options.notify !== false) {
    record.notify = { event: 'loop-end', results: await sendNotification('loop-end', [await runFacts(summary, record)], options, log) };
    if (record.notify.results.some((r) => r.cancelled)) cutSteps.push('notify');
  }
  if (cutSteps.length) {
    record.cancelled = { reason: stopReason(), steps: cutSteps };
    log.warn({ cancelled: record.cancelled }, 'delivery cancelled');
  }
  try {
    await writeJsonAtomic(path.join(dir, DELIVERY_FILE), record);
  } catch (error) {
    log.error({ error: describe(error) }, 'delivery record not written');
  }
  log.flush();
  return record;
}

/** Sends one notification; failures are logged and returned, never thrown. */
export async function sendNotification(event: NotifyEvent, runs: NotifyRun[], options: Pick<DeliverOptions, 'config' | 'version' | 'stateEnv' | 'onNotice' | 'backoffMs' | 'signal'>, log = createLogger()): Promise<NotifyResult[]> {
  const config = options.config.notify;
  if (!config) return [];
  try {
    const results = await notify(notifyBody(event, runs, options.version), {
      config,
      env: process.env,
      version: options.version,
      ...(options.backoffMs !== undefined ? { backoffMs: options.backoffMs } : {}),
      signal: options.signal,
      log: (entry) => (entry.ok ? log.info({ notify: entry }, 'notify attempt') : log.warn({ notify: entry }, 'notify attempt failed')),
    });
    for (const r of results) if (!r.ok && !r.cancelled) options.onNotice?.(`notify ${r.target} failed after ${r.attempts} attempt(s): ${r.error ?? '?'}`);
    return results;
  } catch (error) {
    log.error({ error: describe(error) }, 'notify failed');
    options.onNotice?.(`notify failed: ${describe(error).split('\n')[0] ?? ''}`);
    return [{ target: config.webhook ? 'webhook' : 'command', ok: false, attempts: 0, error: describe(error) }];
  }
}

/**
 * The loops of one night of `loopbox schedule`: each scheduled loop calls `begin()` when it is
 * queued and `end(run)` when it has ended (with its facts, or null); when the last one of the
 * night has ended, one `schedule-night` notification carries them all. Never throws.
 */
export class NightBatch {
  private active = 0;
  private runs: NotifyRun[] = [];
  constructor(private readonly send: (runs: NotifyRun[]) => Promise<unknown>) {}

  begin(): void {
    this.active += 1;
  }

  async end(run: NotifyRun | null): Promise<void> {
    if (run) this.runs.push(run);
    this.active = Math.max(0, this.active - 1);
    if (this.active > 0 || !this.runs.length) return;
    // A bad night reads as one: the runs that need a human come first.
    const runs = [...this.runs.filter((r) => r.needsHuman), ...this.runs.filter((r) => !r.needsHuman)];
    this.runs = [];
    await this.send(runs).catch(() => undefined);
  }
}
