// What a run report shows, gathered from the run directory (state.json, iterations.jsonl,
// run.json, config.json, audit.jsonl) and the repository's objects (the verified commit and its
// diff against the run's base tree). The audit log is read as a stream and folded into counts,
// so a run with millions of records makes a report of bounded size.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { formatVerification, verifyAuditChain } from '../audit/chain.js';
import { streamAudit } from '../audit/stream.js';
import { ConfigError } from '../common/errors.js';
import { runDir } from '../common/paths.js';
import { git } from '../git/hardened.js';
import { END_STATE_EXIT, type EndState } from '../loop/brakes.js';
import { type IterationRecord, type LoopState, loadState, readIterations } from '../loop/state.js';
import { readRun } from '../runs/registry.js';

export interface EgressGroup {
  /** `dns` (by name), `packet` (by destination), or another record kind. */
  kind: string;
  /** The name asked, `proto dst:port`, or the kind. */
  key: string;
  /** Query types for DNS, rules for packets. */
  detail: string[];
  count: number;
  first: string;
  last: string;
  iterations: number[];
}

export interface ChainResult {
  status: 'ok' | 'broken' | 'not-available';
  message: string;
}

export interface DiffFile {
  path: string;
  added: number | null;
  deleted: number | null;
}

export interface ReportData {
  runId: string;
  task: string;
  endState: EndState | 'running' | 'unknown';
  endReason: string;
  exitCode: number | null;
  trigger: string;
  startedAt: string | null;
  endedAt: string | null;
  wallMs: number;
  repo: string;
  branch: string;
  iterations: IterationRecord[];
  tokens: number;
  /** Blocked attempts as the firewall and DNS counted them (iterations.jsonl), as `loopbox run` reports. */
  blocked: number;
  verified: { commit: string; iteration: number; message: string; files: DiffFile[]; error?: string } | null;
  lastCommit: string | null;
  egress: {
    records: number;
    attempts: number;
    packets: number;
    dns: number;
    /** Requests the model gateway refused (`model-denied` records). */
    modelDenied: number;
    lost: number;
    other: number;
    groups: EgressGroup[];
    /** Attempts per second since the first record: [second offset, packets, dns]. */
    perSecond: Array<[number, number, number]>;
    firstTime: string | null;
    lastTime: string | null;
    /** Problems reading the log (bad lines). */
    warnings: string[];
  };
  model: {
    name: string;
    ctxSize: number | null;
    tokens: number;
    allowedPackets: number;
    allowedBytes: number;
    dnsAnswered: number;
    /** Audit records of the model gateway's kinds (`model-denied`), by kind. */
    requests: Record<string, number>;
    /** Per-request usage the model gateway recorded (`model.jsonl`), when the run has it. */
    gateway: { requests: number; denied: number; promptTokens: number; cachedTokens: number; completionTokens: number; deniedWhy: Record<string, number> } | null;
  };
  chain: ChainResult;
  generatedAt: string;
  version: string;
}

export interface ReportOptions {
  /** Verifies the run's audit chain; without it the report says "not available". */
  verifyChain?: (runId: string) => Promise<ChainResult>;
  version: string;
  env?: NodeJS.ProcessEnv;
}

export async function gatherReport(runId: string, options: ReportOptions): Promise<ReportData> {
  const env = options.env ?? process.env;
  const dir = runDir(runId, env);
  if (!existsSync(dir)) {
    throw new ConfigError(`No run ${runId} under ${path.dirname(dir)}.`, [], { hint: 'Check the run id (the summary table of `loopbox run` prints it) and LOOPBOX_STATE_DIR.' });
  }
  const state = await loadState(dir);
  if (!state) throw new ConfigError(`Run ${runId} has no state.json: it is not a loop run.`, [], { hint: '`loopbox report` reports on runs of `loopbox run`; for a `sandbox run`, use `loopbox audit --run`.' });
  const [iterations, run, config] = await Promise.all([readIterations(dir), readRun(runId, env), readConfig(dir)]);
  const endState: ReportData['endState'] = state.endState ?? (run && !run.endedAt ? 'running' : 'unknown');
  const verifiedIt = [...iterations].reverse().find((i) => i.verified && i.commit);
  const egress = await foldAudit(runId, env);
  return {
    runId,
    task: state.task,
    endState,
    endReason: state.endReason ?? (endState === 'running' ? 'the loop is still running' : 'no end reason was recorded (the process may have been killed)'),
    exitCode: state.endState ? END_STATE_EXIT[state.endState] : null,
    trigger: state.trigger,
    startedAt: iterations[0]?.startedAt ?? run?.startedAt ?? null,
    endedAt: run?.endedAt ?? iterations.at(-1)?.endedAt ?? null,
    wallMs: state.elapsedMs,
    repo: state.repo,
    branch: state.branch,
    iterations,
    tokens: state.tokens,
    blocked: sum(iterations, (i) => i.audit.blockedPackets + i.audit.dnsBlocked),
    verified: verifiedIt ? await verifiedCommit(state, verifiedIt) : null,
    lastCommit: [...iterations].reverse().find((i) => i.commit)?.commit ?? null,
    egress,
    model: {
      name: config.model?.endpoint ?? (config.model?.gguf ? path.basename(config.model.gguf) : 'the managed model server'),
      ctxSize: config.model?.ctxSize ?? null,
      tokens: state.tokens,
      allowedPackets: sum(iterations, (i) => i.audit.allowedPackets),
      allowedBytes: sum(iterations, (i) => i.audit.allowedBytes),
      dnsAnswered: sum(iterations, (i) => i.audit.dnsAnswered),
      requests: egress.modelKinds,
      gateway: await foldModelRequests(path.join(dir, MODEL_REQUESTS_FILE)),
    },
    chain: await (options.verifyChain ?? ((id: string) => chainResult(id, options.env)))(runId).catch((e: unknown) => ({ status: 'broken' as const, message: e instanceof Error ? e.message : String(e) })),
    generatedAt: new Date().toISOString(),
    version: options.version,
  };
}

function sum<T>(items: T[], f: (t: T) => number): number {
  return items.reduce((n, t) => n + (f(t) || 0), 0);
}

async function readConfig(dir: string): Promise<{ model?: { gguf?: string; endpoint?: string; ctxSize?: number } }> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as { model?: { gguf?: string; endpoint?: string; ctxSize?: number } };
  } catch {
    return {};
  }
}

/** The verified commit's message and its diff against the run's base tree, from git objects only. */
async function verifiedCommit(state: LoopState, it: IterationRecord): Promise<NonNullable<ReportData['verified']>> {
  const commit = it.commit!;
  try {
    const message = await git(['log', '-1', '--format=%B', commit, '--'], { cwd: state.repo });
    // diff-tree compares two trees in the object store: no worktree file is read, no textconv
    // or external diff can run (the hardened runner turns them off as well).
    const numstat = await git(['diff-tree', '-r', '--numstat', '--no-renames', '--no-ext-diff', '--no-textconv', '-z', state.baseTree, `${commit}^{tree}`], { cwd: state.repo });
    const files: DiffFile[] = [];
    for (const entry of numstat.split('\0')) {
      const m = /^(-|\d+)\t(-|\d+)\t([\s\S]*)$/.exec(entry);
      if (m) files.push({ path: m[3]!, added: m[1] === '-' ? null : Number(m[1]), deleted: m[2] === '-' ? null : Number(m[2]) });
    }
    return { commit, iteration: it.iteration, message: message.trim(), files };
  } catch (error) {
    return { commit, iteration: it.iteration, message: '', files: [], error: `could not read the commit from ${state.repo}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}` };
  }
}

/** The model gateway's per-request log in the run directory (written where the gateway runs). */
export const MODEL_REQUESTS_FILE = 'model.jsonl';

async function foldModelRequests(file: string): Promise<ReportData['model']['gateway']> {
  if (!existsSync(file)) return null;
  const g = { requests: 0, denied: 0, promptTokens: 0, cachedTokens: 0, completionTokens: 0, deniedWhy: {} as Record<string, number> };
  const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  for await (const line of createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity })) {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    g.requests += 1;
    g.promptTokens += num(r.promptTokens);
    g.cachedTokens += num(r.cachedTokens);
    g.completionTokens += num(r.completionTokens);
    if (typeof r.denied === 'string' && r.denied) {
      g.denied += 1;
      g.deniedWhy[r.denied] = (g.deniedWhy[r.denied] ?? 0) + 1;
    }
  }
  return g;
}

const MAX_GROUPS = 500;

async function foldAudit(runId: string, env: NodeJS.ProcessEnv): Promise<ReportData['egress'] & { modelKinds: Record<string, number> }> {
  const groups = new Map<string, EgressGroup>();
  const seconds = new Map<number, [number, number]>();
  const warnings: string[] = [];
  const modelKinds: Record<string, number> = {};
  let records = 0;
  let attempts = 0;
  let packets = 0;
  let dns = 0;
  let lost = 0;
  let other = 0;
  let modelDenied = 0;
  let first: number | null = null;
  let firstTime: string | null = null;
  let lastTime: string | null = null;
  for await (const { record: r } of streamAudit({ runId, onWarning: (m) => warnings.length < 20 && warnings.push(m) }, env)) {
    records += 1;
    const count = typeof r.count === 'number' ? r.count : 1;
    const kind: string = typeof r.kind === 'string' ? r.kind : 'unknown';
    if (kind === 'loss') {
      lost += count;
      continue;
    }
    if (kind.startsWith('model-')) modelKinds[kind] = (modelKinds[kind] ?? 0) + count;
    if (kind !== 'packet' && kind !== 'dns' && kind !== 'model-denied') {
      other += count;
      continue;
    }
    attempts += count;
    if (kind === 'packet') packets += count;
    else if (kind === 'dns') dns += count;
    else modelDenied += count;
    const time = typeof r.time === 'string' ? r.time : '';
    const t = Date.parse(time);
    if (!Number.isNaN(t)) {
      first ??= t;
      firstTime ??= time;
      lastTime = time;
      const s = Math.max(0, Math.floor((t - first) / 1000));
      const b = seconds.get(s) ?? [0, 0];
      b[kind === 'dns' ? 1 : 0] += count;
      seconds.set(s, b);
    }
    const dst = r.dst ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}${r.dstPort != null ? `:${r.dstPort}` : ''}` : '-';
    // DNS by name, a refused model request by method and path, a packet by destination.
    const key = kind === 'dns' ? (r.query ?? '?') : kind === 'model-denied' ? `${r.queryType ?? '?'} ${r.query ?? '?'}` : `${r.protocol ?? '?'} ${dst}`;
    const id = `${kind}\0${key}`;
    let g = groups.get(id);
    if (!g) {
      if (groups.size >= MAX_GROUPS) {
        g = groups.get('other\0(more destinations)');
        if (!g) groups.set('other\0(more destinations)', (g = { kind: 'other', key: `(more than ${MAX_GROUPS} destinations)`, detail: [], count: 0, first: time, last: time, iterations: [] }));
      } else {
        groups.set(id, (g = { kind, key, detail: [], count: 0, first: time, last: time, iterations: [] }));
      }
    }
    g.count += count;
    g.last = time;
    const detail = kind === 'dns' ? (r.queryType ?? '?') : r.rule;
    if (detail && !g.detail.includes(detail) && g.detail.length < 8) g.detail.push(detail);
    if (typeof r.iteration === 'number' && !g.iterations.includes(r.iteration)) g.iterations.push(r.iteration);
  }
  return {
    records,
    attempts,
    packets,
    dns,
    modelDenied,
    lost,
    other,
    groups: [...groups.values()].sort((a, b) => b.count - a.count || a.key.localeCompare(b.key)),
    perSecond: [...seconds.entries()].sort((a, b) => a[0] - b[0]).map(([s, [p, d]]) => [s, p, d]),
    firstTime,
    lastTime,
    warnings,
    modelKinds,
  };
}

/** The audit chain's verdict for the report: recomputed hashes, links and checkpoint signatures. */
async function chainResult(runId: string, env?: NodeJS.ProcessEnv): Promise<ChainResult> {
  const v = await verifyAuditChain(runDir(runId, env ?? process.env), { env });
  return { status: v.ok ? 'ok' : 'broken', message: formatVerification(v) };
}
