// What the sentry's model gateway wrote (one JSON line per request in gateway.jsonl) turned
// into: per-request usage records for `<run dir>/model.jsonl`, audit records of kind
// `model-denied` for the requests it refused, and the tokens of the read window. The window is
// the sentry's read cursor, like the firewall's files (docs/audit-log.md), so tokens are exact
// per iteration and per loop even when loops share one model server.
import { appendFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { type AuditRecord, type SandboxIdentity, auditHeader } from '../audit/record.js';
import { runDir } from '../common/paths.js';
import { DEFAULT_RECORD_LIMIT, RecordLimiter, streamLines } from './ingest.js';

export const GATEWAY_FILE = 'gateway.jsonl';
export const MODEL_REQUESTS_FILE = 'model.jsonl';

/** One request as the gateway saw it, attributed to a run, task and iteration. */
export interface ModelRequestRecord {
  time: string;
  runId: string;
  task: string | null;
  iteration: number | null;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  /** Prompt tokens, cached ones included; null when the response carried no counts. */
  promptTokens: number | null;
  /** Of the prompt tokens, those served from the server's prompt cache. */
  cachedTokens: number | null;
  completionTokens: number | null;
  /** Why the gateway refused the request (`path`, `token-budget`, `body-too-large`...), else null. */
  denied: string | null;
  /** Set when the gateway sent it to model.escalate's endpoint: that model's name, and its `ip:port`. */
  escalated?: { model: string; upstream: string };
}

/** Token totals of a read window. `tokens` is what the budget counts: uncached prompt + completion. */
export interface ModelUsage {
  requests: number;
  denied: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  tokens: number;
  /** The gateway refused a request because the token budget was used up. */
  budgetExceeded: boolean;
  /** Of `tokens`, those of requests sent to model.escalate's endpoint. */
  escalatedTokens?: number;
  /** The gateway refused a request because model.escalate.tokenBudget was used up. */
  escalateBudgetExceeded?: boolean;
}

export const NO_MODEL_USAGE: ModelUsage = { requests: 0, denied: 0, promptTokens: 0, cachedTokens: 0, completionTokens: 0, tokens: 0, budgetExceeded: false };

export interface GatewayRead {
  requests: ModelRequestRecord[];
  audit: AuditRecord[];
  usage: ModelUsage;
  /** Lines that were not a gateway record (never expected: counted, not dropped silently). */
  malformed: number;
  /** Byte offset after the last complete line read. */
  offset: number;
}

type Json = Record<string, unknown>;

const count = (v: unknown): number | null => (typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : null);
const text = (v: unknown, max = 512): string => (typeof v === 'string' ? v.slice(0, max) : '');

/** One gateway line as a request record; undefined when it is not one. */
export function parseGatewayLine(line: string, id: SandboxIdentity): ModelRequestRecord | undefined {
  let j: Json;
  try {
    j = JSON.parse(line) as Json;
  } catch {
    return undefined;
  }
  const status = count(j.status);
  const time = text(j.time, 40);
  if (status === null || Number.isNaN(new Date(time).getTime())) return undefined;
  return {
    time,
    runId: id.runId,
    task: id.task ?? null,
    iteration: id.iteration ?? null,
    method: text(j.method, 64),
    path: text(j.path),
    status,
    durationMs: typeof j.durationMs === 'number' ? j.durationMs : 0,
    promptTokens: count(j.promptTokens),
    cachedTokens: count(j.cachedTokens),
    completionTokens: count(j.completionTokens),
    denied: typeof j.denied === 'string' ? text(j.denied, 128) : null,
    ...(j.escalated === true ? { escalated: { model: text(j.model, 256), upstream: text(j.upstream, 64) } } : {}),
  };
}

/** A request the gateway sent to the escalation endpoint: an `allowed` audit record with its tokens. */
export function escalatedAuditRecord(r: ModelRequestRecord, role: string): AuditRecord {
  const upstream = r.escalated?.upstream ?? '';
  const at = upstream.lastIndexOf(':');
  const port = Number(upstream.slice(at + 1));
  return {
    time: r.time,
    runId: r.runId,
    task: r.task,
    iteration: r.iteration,
    role,
    kind: 'model-escalated',
    protocol: 'http',
    family: 'ipv4',
    direction: 'out',
    src: null,
    srcPort: null,
    dst: at > 0 ? upstream.slice(0, at) : null,
    dstPort: at > 0 && Number.isInteger(port) ? port : null,
    uid: null,
    query: r.path,
    queryType: r.method,
    icmpType: null,
    verdict: 'allowed',
    rule: `gateway escalate ${r.status}`,
    count: 1,
    escalation: { model: r.escalated?.model ?? '', status: r.status, promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, completionTokens: r.completionTokens, durationMs: r.durationMs },
  };
}

export function deniedAuditRecord(r: ModelRequestRecord, role: string, model: { ip: string; port: number } | undefined): AuditRecord {
  return {
    ...auditHeader(r.time, r, role, 'model-denied'),
    protocol: 'http',
    family: model ? (model.ip.includes(':') ? 'ipv6' : 'ipv4') : null,
    direction: 'out',
    src: null,
    srcPort: null,
    dst: model?.ip ?? null,
    dstPort: model?.port ?? null,
    uid: null,
    query: r.path,
    queryType: r.method,
    icmpType: null,
    verdict: 'denied',
    rule: `gateway ${r.status} ${r.denied ?? ''}`.trim(),
    count: 1,
  };
}

function addUsage(u: ModelUsage, r: ModelRequestRecord): void {
  u.requests += 1;
  if (r.denied) u.denied += 1;
  if (r.denied === 'token-budget') u.budgetExceeded = true;
  const prompt = r.promptTokens ?? 0;
  const cached = Math.min(prompt, r.cachedTokens ?? 0);
  u.promptTokens += prompt;
  u.cachedTokens += cached;
  u.completionTokens += r.completionTokens ?? 0;
  u.tokens += prompt - cached + (r.completionTokens ?? 0);
  if (r.escalated) u.escalatedTokens = (u.escalatedTokens ?? 0) + prompt - cached + (r.completionTokens ?? 0);
  if (r.denied === 'escalate-budget') u.escalateBudgetExceeded = true;
}

export function sumUsage(requests: ModelRequestRecord[]): ModelUsage {
  const u = { ...NO_MODEL_USAGE };
  for (const r of requests) addUsage(u, r);
  return u;
}

/**
 * Reads the complete lines of the gateway's file after byte `offset`, streaming, and attributes
 * them to `id`. Refusals become `model-denied` audit records through the same rate limit as the
 * firewall's records; every forwarded request is kept (each one cost the model real work), a
 * refused one only while its kind is under the limit (the rest are counted in the aggregate).
 */
export async function readGatewayRecords(
  dir: string,
  id: SandboxIdentity,
  role: string,
  offset: number,
  model: { ip: string; port: number } | undefined,
  recordLimit = DEFAULT_RECORD_LIMIT,
): Promise<GatewayRead> {
  const requests: ModelRequestRecord[] = [];
  const limiter = new RecordLimiter(recordLimit);
  let denied = 0;
  let malformed = 0;
  const usage = { ...NO_MODEL_USAGE };
  // Every escalated request is kept as an `allowed` record, past any limit: each one was sent
  // out with the gateway's key and is billed.
  const escalated: AuditRecord[] = [];
  const read = await streamLines(path.join(dir, GATEWAY_FILE), offset, (line) => {
    if (line === null) {
      malformed += 1;
      return;
    }
    if (!line.trim()) return;
    const r = parseGatewayLine(line, id);
    if (!r) {
      malformed += 1;
      return;
    }
    addUsage(usage, r);
    if (r.escalated && !r.denied) escalated.push(escalatedAuditRecord(r, role));
    if (!r.denied) requests.push(r);
    else {
      limiter.add(deniedAuditRecord(r, role, model));
      if ((denied += 1) <= recordLimit) requests.push(r);
    }
  });
  return { requests, audit: [...escalated, ...limiter.finish()], usage, malformed, offset: offset + read.bytes };
}

/** Appends request records to the run's `model.jsonl` (created 0600, like the audit log). */
export async function appendModelRequests(runId: string, records: ModelRequestRecord[], env?: NodeJS.ProcessEnv): Promise<void> {
  if (!records.length) return;
  const dir = runDir(runId, env);
  await mkdir(dir, { recursive: true });
  await appendFile(path.join(dir, MODEL_REQUESTS_FILE), records.map((r) => `${JSON.stringify(r)}\n`).join(''), { mode: 0o600 });
}
