// The Docker engine going away mid-iteration (dockerd killed or restarted, issue 20 item 2).
// The iteration that was running is void: its containers died with the engine, so nothing it
// did can be verified. The loop waits for the engine (bounded by loop.engineWait), cleans up
// what the dead iteration left, records it as void (not counted against the brakes) and goes on.
import { DockerUnavailableError, LoopboxError, describe } from '../common/errors.js';
import type { CollectResult } from '../sandbox/sandbox.js';
import { type EscalationState, workerModel } from './escalation.js';
import type { LoopContext } from './iteration.js';
import type { IterationRecord } from './state.js';

type ModelUsage = CollectResult['model'];

/** Socket-level failures: the engine hung up, or is not listening (yet). */
const GONE_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ENOENT', 'EPIPE', 'ECONNABORTED', 'ETIMEDOUT']);

/** Does this error (or one it was caused by) say that the engine itself went away? */
export function isEngineLoss(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e: unknown = error; e !== undefined && e !== null && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    if (e instanceof DockerUnavailableError) return true;
    // A file error (it names a `path`: the worktree or a report gone) is not the engine's: a void
    // iteration skips every brake, so an error that recurs must not pass for an engine loss.
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && GONE_CODES.has(code) && typeof (e as { path?: unknown }).path !== 'string') return true;
    // Node's own socket messages start so; text that merely quotes them (a git error naming a
    // file the agent made) does not count.
    if (e instanceof Error && /^(socket hang up|connect ENOENT \S*docker\.sock|connect ECONNREFUSED \S*docker\.sock)/i.test(e.message)) return true;
  }
  return false;
}

/** What the engine wait needs of a backend (or a Docker client): a ping. */
export interface Pingable {
  ping(): Promise<unknown>;
}

/** True when the engine answers a ping now. */
export async function engineAnswers(docker: Pingable): Promise<boolean> {
  return docker.ping().then(
    () => true,
    () => false,
  );
}

/**
 * Polls the engine until it answers, at most `timeoutMs`; false if it did not (or `signal`
 * fired). `onWait` is told once when the first ping fails.
 */
export async function waitForEngine(docker: Pingable, timeoutMs: number, signal: AbortSignal, intervalMs = 1000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await engineAnswers(docker)) return true;
    if (signal.aborted || Date.now() >= deadline) return false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, Math.min(intervalMs, Math.max(0, deadline - Date.now())));
      function done(): void {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

/**
 * The record of an iteration the engine's loss voided: no verification, no commit, the tree of
 * the last counted iteration (so the brakes see no change), and why. Its tokens are the ones the
 * gateway recorded for it (`model`, read from the sentry's audit files after the engine came
 * back), or 0 when none could be read.
 */
export function voidRecord(iteration: number, startedAt: Date, tree: string, error: unknown, waitedMs: number, model?: IterationRecord['model'] & { tokens: number }): IterationRecord {
  return {
    iteration,
    startedAt: startedAt.toISOString(),
    endedAt: new Date().toISOString(),
    agent: { exitCode: -1, timedOut: false, durationMs: Date.now() - startedAt.getTime(), stoppedFor: 'the Docker engine went away' },
    tree,
    filesChanged: [],
    protectedViolations: [],
    skipped: [],
    untrusted: null,
    verify: null,
    evidence: null,
    commit: null,
    verified: false,
    tokens: model?.tokens ?? 0,
    ...(model ? { model: { promptTokens: model.promptTokens, cachedTokens: model.cachedTokens, completionTokens: model.completionTokens, requests: model.requests, denied: model.denied, ...(model.name !== undefined ? { name: model.name } : {}), ...(model.escalated !== undefined ? { escalated: model.escalated } : {}) } } : {}),
    audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0, records: 0 },
    modelDown: false,
    void: `the Docker engine went away (${describe(error).split('\n')[0] ?? 'error'}); it answered again after ${Math.round(waitedMs / 1000)} s`,
  };
}

/**
 * After `runIteration` threw: if the engine went away, wait for it (loop.engineWait), clean up
 * what the dead iteration left (its sentry, whose audit files are read first, and any container
 * of the run), and return the void record. Undefined when the error is not the engine's loss,
 * so the caller rethrows it. Throws when the engine does not come back in time.
 */
export async function voidAfterEngineLoss(ctx: LoopContext, error: unknown, iteration: number, startedAt: Date, tree: string, notify: (message: string) => void, escalation?: EscalationState): Promise<IterationRecord | undefined> {
  if (!isEngineLoss(error) && (await engineAnswers(ctx.backend))) return undefined;
  const waitMs = ctx.config.loop.engineWait;
  const first = describe(error).split('\n')[0] ?? 'error';
  ctx.log.warn({ iteration, error: describe(error), waitMs }, 'docker engine lost: waiting for it');
  notify(`the Docker engine went away during iteration ${iteration} (${first}); waiting up to ${Math.round(waitMs / 1000)} s for it (loop.engineWait)`);
  const t0 = Date.now();
  if (!(await waitForEngine(ctx.backend, waitMs, ctx.signal))) {
    throw new LoopboxError(`The Docker engine went away during iteration ${iteration} and did not answer again within ${Math.round(waitMs / 1000)} s.`, {
      cause: error,
      hint: 'Start Docker again (`docker info` must work), then `loopbox run --resume <run>`; raise loop.engineWait if restarts take longer here.',
    });
  }
  const waited = Date.now() - t0;
  ctx.log.warn({ iteration, waitedMs: waited }, 'docker engine back: the iteration is void');
  notify(`the Docker engine answers again after ${Math.round(waited / 1000)} s: iteration ${iteration} is void (not counted against the brakes); cleaning up and going on`);
  // The gateway wrote each finished model request to the sentry's audit folder on the host, so
  // the void iteration's tokens can still be read: they count (and the token budget sees them).
  const usage = await voidUsage(ctx, iteration);
  const model = usage ? { ...usage, ...workerModel(ctx.config, escalation) } : undefined;
  // The sentry died with the engine: what it logged is read now (audit), its container goes,
  // and the next iteration starts a new one. Then whatever else of the run is left.
  await ctx.sentries.stop().catch((e: unknown) => ctx.log.warn({ error: describe(e) }, 'stopping the dead sentry failed'));
  await ctx.backend.removeRun(ctx.runId).catch((e: unknown) => ctx.log.warn({ error: describe(e) }, 'removing the void iteration\'s containers failed'));
  return voidRecord(iteration, startedAt, tree, error, waited, model);
}

function addUsage(a: ModelUsage, b: ModelUsage): ModelUsage {
  return {
    ...a,
    requests: a.requests + b.requests,
    denied: a.denied + b.denied,
    promptTokens: a.promptTokens + b.promptTokens,
    cachedTokens: a.cachedTokens + b.cachedTokens,
    completionTokens: a.completionTokens + b.completionTokens,
    tokens: a.tokens + b.tokens,
    budgetExceeded: a.budgetExceeded || b.budgetExceeded,
  };
}

/**
 * The model usage the gateway recorded for the void iteration: a collection the iteration had
 * already made (the engine went away after its agent), plus what the dead sentry's files hold
 * since (read from the host; the container need not run). A request in flight when the engine
 * died was never written by the gateway: it cannot be counted. Undefined when nothing could be read.
 */
async function voidUsage(ctx: LoopContext, iteration: number): Promise<ModelUsage | undefined> {
  const parts: ModelUsage[] = [];
  const earlier = ctx.sentries.lastCollect;
  if (earlier?.iteration === iteration) {
    const r = await earlier.result.catch(() => undefined);
    if (r) parts.push(r.model);
  }
  const sentry = ctx.sentries.current;
  if (sentry) {
    try {
      parts.push((await ctx.backend.collectAudit(sentry, { runId: ctx.runId, task: ctx.task.name, iteration })).model);
    } catch (e) {
      ctx.log.warn({ iteration, error: describe(e) }, "the void iteration's model usage could not be read");
    }
  }
  return parts.length ? parts.reduce(addUsage) : undefined;
}
