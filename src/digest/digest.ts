// `loopbox digest`: what happened overnight, from the runs directory only: every loop run that
// was active since a point in time, with its end state and why, iterations, wall time, tokens,
// verified commit, pushed branch / PR (delivery.json), blocked attempts (top names), the audit
// chain's verdict, and what needs a human. Errors come first: a bad night must read as one.
import { hostname } from 'node:os';
import { describe } from '../common/errors.js';
import { runDir } from '../common/paths.js';
import { type DeliveryRecord, needsHuman, readDelivery } from '../deliver/deliver.js';
import { gatherReport, type ChainResult } from '../report/data.js';
import { listRuns, type RunRecord } from '../runs/registry.js';
import { printable } from '../common/text.js';

export interface DigestRun {
  runId: string;
  task: string;
  trigger: string;
  startedAt: string;
  endedAt: string | null;
  endState: string;
  reason: string;
  exitCode: number | null;
  iterations: number;
  wallMs: number;
  tokens: number;
  branch: string;
  verifiedCommit: string | null;
  lastCommit: string | null;
  evidence: string | null;
  blocked: number;
  /** The most-tried blocked destinations (DNS names, addresses), most first. */
  topBlocked: Array<{ name: string; count: number }>;
  audit: ChainResult;
  review: { approved: number; rejected: number; last: string | null } | null;
  delivery: DeliveryRecord | null;
  /** Why a person should look at this run; empty when nothing needs one. */
  attention: string[];
}

export interface Digest {
  schema: 'loopbox.digest/v1';
  generatedAt: string;
  since: string;
  host: string;
  version: string;
  totals: { runs: number; done: number; needsHuman: number; byState: Record<string, number> };
  runs: DigestRun[];
}

export interface DigestOptions {
  /** Runs active at or after this time. */
  since: Date;
  version: string;
  env?: NodeJS.ProcessEnv;
  now?: Date;
}

const RANK: Record<string, number> = { error: 0, unknown: 0, stalled: 1, capped: 1, 'timed-out-budget': 1, running: 3, aborted: 4, done: 5 };

/** Errors first, then runs that need a human, then the rest; newest first within each. */
export function sortRuns(runs: DigestRun[]): DigestRun[] {
  return [...runs].sort((a, b) => {
    const ra = (RANK[a.endState] ?? 2) - (a.attention.length ? 0.5 : 0);
    const rb = (RANK[b.endState] ?? 2) - (b.attention.length ? 0.5 : 0);
    return ra - rb || b.startedAt.localeCompare(a.startedAt);
  });
}

function attentionOf(r: Omit<DigestRun, 'attention'>): string[] {
  const why: string[] = [];
  const reviewRejected = r.review !== null && r.review.rejected > 0 && r.endState !== 'done';
  if (needsHuman(r.endState, reviewRejected, false)) {
    if (r.endState === 'error' || r.endState === 'unknown') why.push(`errored: ${r.reason}`);
    else if (r.endState === 'stalled') why.push(`stalled: ${r.reason}`);
    else if (r.endState === 'capped' || r.endState === 'timed-out-budget') why.push(`${r.endState}: ${r.reason}`);
    if (reviewRejected) why.push(`reviewer rejected ${r.review?.rejected ?? 0} time(s)${r.review?.last ? `: ${r.review.last}` : ''}`);
  }
  if (r.delivery?.push?.status === 'failed') why.push(`push failed: ${(r.delivery.push.error ?? '').split('\n')[0] ?? ''}`);
  if (r.delivery?.pullRequest?.status === 'failed') why.push(`pull request failed: ${(r.delivery.pullRequest.error ?? '').split('\n')[0] ?? ''}`);
  for (const n of r.delivery?.notify?.results ?? []) if (!n.ok) why.push(`notify ${n.target} failed: ${n.error ?? '?'}`);
  if (r.audit.status === 'broken') why.push(`audit chain broken: ${r.audit.message.split('\n')[0] ?? ''}`);
  return why;
}

async function digestRun(run: RunRecord, options: DigestOptions): Promise<DigestRun> {
  const env = options.env ?? process.env;
  const delivery = await readDelivery(runDir(run.runId, env));
  try {
    const d = await gatherReport(run.runId, { version: options.version, env });
    const last = [...d.iterations].reverse().find((i) => i.review)?.review;
    const reviews = d.iterations.filter((i) => i.review);
    const base: Omit<DigestRun, 'attention'> = {
      runId: run.runId,
      task: d.task,
      trigger: d.trigger,
      startedAt: run.startedAt,
      endedAt: run.endedAt ?? null,
      endState: d.endState,
      reason: d.endReason,
      exitCode: d.exitCode,
      iterations: d.iterations.length,
      wallMs: d.wallMs,
      tokens: d.tokens,
      branch: d.branch,
      verifiedCommit: d.verified?.commit ?? null,
      lastCommit: d.lastCommit,
      evidence: [...d.iterations].reverse().find((i) => i.evidence)?.evidence ?? null,
      blocked: d.blocked,
      topBlocked: d.egress.groups.filter((g) => g.kind === 'dns' || g.kind === 'packet' || g.kind === 'model-denied').slice(0, 5).map((g) => ({ name: g.key, count: g.count })),
      audit: d.chain,
      review: reviews.length ? { approved: reviews.filter((i) => i.review?.verdict === 'approve').length, rejected: reviews.filter((i) => i.review?.verdict !== 'approve').length, last: last ? `${last.verdict} (${last.model})${last.reasons.length ? `: ${last.reasons.join('; ')}` : ''}` : null } : null,
      delivery,
    };
    return { ...base, attention: attentionOf(base) };
  } catch (error) {
    // A run whose records cannot be read is reported, not skipped: that is a thing to look at.
    const base: Omit<DigestRun, 'attention'> = {
      runId: run.runId, task: run.task ?? '?', trigger: run.trigger ?? '?', startedAt: run.startedAt, endedAt: run.endedAt ?? null, endState: 'unknown',
      reason: `its records cannot be read: ${describe(error).split('\n')[0] ?? ''}`, exitCode: null, iterations: 0, wallMs: 0, tokens: 0, branch: '', verifiedCommit: null,
      lastCommit: null, evidence: null, blocked: 0, topBlocked: [], audit: { status: 'not-available', message: 'not read' }, review: null, delivery,
    };
    return { ...base, attention: attentionOf(base) };
  }
}

/** Loop runs active at or after `since` (started, or still running / ended after it). */
export async function gatherDigest(options: DigestOptions): Promise<Digest> {
  const env = options.env ?? process.env;
  const since = options.since.getTime();
  const runs = (await listRuns(env)).filter((r) => r.kind === 'loop' && Date.parse(r.endedAt ?? new Date().toISOString()) >= since && !r.queued);
  const entries: DigestRun[] = [];
  for (const run of runs) entries.push(await digestRun(run, options));
  const sorted = sortRuns(entries);
  const byState: Record<string, number> = {};
  for (const r of sorted) byState[r.endState] = (byState[r.endState] ?? 0) + 1;
  return {
    schema: 'loopbox.digest/v1',
    generatedAt: (options.now ?? new Date()).toISOString(),
    since: options.since.toISOString(),
    host: hostname(),
    version: options.version,
    totals: { runs: sorted.length, done: byState.done ?? 0, needsHuman: sorted.filter((r) => r.attention.length).length, byState },
    runs: sorted,
  };
}

const secs = (ms: number): string => (ms >= 3_600_000 ? `${(ms / 3_600_000).toFixed(1)} h` : ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${(ms / 1000).toFixed(1)} s`);
const short = (sha: string | null): string => (sha ? sha.slice(0, 12) : '-');

export function deliveredText(d: DeliveryRecord | null): string {
  if (!d) return 'not delivered';
  const parts: string[] = [];
  if (d.push) parts.push(d.push.status === 'pushed' || d.push.status === 'up-to-date' ? `pushed ${d.push.branch ?? ''} (${d.push.remote ?? ''})` : d.push.status === 'failed' ? 'push FAILED' : `push ${d.push.status === 'cancelled' ? 'cancelled' : 'skipped'}: ${d.push.reason ?? ''}`);
  if (d.pullRequest) parts.push(d.pullRequest.url ? `PR ${d.pullRequest.url}` : `PR ${d.pullRequest.status}${d.pullRequest.reason ? `: ${d.pullRequest.reason}` : ''}`);
  return parts.join('; ') || 'not delivered';
}

/** The digest for a terminal or a mail. */
export function renderDigestText(d: Digest): string {
  const lines = [`loopbox digest since ${d.since} on ${d.host}: ${d.totals.runs} run(s), ${d.totals.done} done, ${d.totals.needsHuman} need a human`];
  if (!d.runs.length) lines.push('', 'No loop ran in this window.');
  for (const r of d.runs) {
    lines.push('', `${r.attention.length ? '!! ' : ''}${r.task}  ${r.endState.toUpperCase()}  (run ${r.runId}, ${r.trigger})`);
    lines.push(`   why: ${r.reason}`);
    for (const a of r.attention) lines.push(`   needs a human: ${a}`);
    lines.push(`   ${r.iterations} iteration(s), ${secs(r.wallMs)}, ${r.tokens} tokens; verified ${short(r.verifiedCommit)}${r.evidence ? ` (${r.evidence})` : ''}`);
    lines.push(`   delivered: ${deliveredText(r.delivery)}`);
    lines.push(`   blocked: ${r.blocked}${r.topBlocked.length ? ` (${r.topBlocked.map((b) => `${b.name} ×${b.count}`).join(', ')})` : ''}; audit chain: ${r.audit.status}`);
  }
  // Reasons, review verdicts, error texts and URLs came from agents, reviewers and remotes: no
  // control character (a terminal escape, a line break that fakes a run) reaches the terminal.
  return `${lines.map(printable).join('\n')}\n`;
}
