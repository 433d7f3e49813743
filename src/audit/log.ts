// The run's audit log: `<run dir>/audit.jsonl`, one JSON record per line, append-only, each
// line chained to the one before by its hash and sealed by signed checkpoints (chain.ts).
// Every append is fsynced before it returns: callers delete raw files only after that.
import { createReadStream, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { mkdir, open, stat, truncate } from 'node:fs/promises';
import { ConfigError } from '../common/errors.js';
import path from 'node:path';
import { runDir } from '../common/paths.js';
import { AUDIT_FORMAT, CHECKPOINTS_FILE, type AuditKey, checkpointOrigin, lineHash, loadAuditKey, parseCheckpoint, signCheckpoint } from './chain.js';
import { AUDIT_FILE, type AuditQuery, type AuditRecord, type StoredAuditRecord } from './record.js';
import { streamAudit } from './stream.js';
import { printable } from '../common/text.js';

export { AUDIT_FILE };

export function auditFile(runId: string, env = process.env): string {
  return path.join(runDir(runId, env), AUDIT_FILE);
}

/** When checkpoints are written: after this many records, or this long after the oldest unsealed one. */
export interface CheckpointPolicy {
  everyRecords: number;
  everyMs: number;
}

export const DEFAULT_CHECKPOINT_POLICY: CheckpointPolicy = { everyRecords: 1000, everyMs: 60_000 };
let policy: CheckpointPolicy = DEFAULT_CHECKPOINT_POLICY;

/** Changes the checkpoint policy for writers opened from now on (tests, benchmarks). */
export function setCheckpointPolicy(next: Partial<CheckpointPolicy>): void {
  policy = { ...DEFAULT_CHECKPOINT_POLICY, ...next };
}

/** The appender of one run's log: keeps the chain's head, serialises appends, seals. */
class AuditWriter {
  private queue: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    readonly runId: string,
    private readonly dir: string,
    private readonly key: AuditKey,
    private readonly policy: CheckpointPolicy,
    private seq: number,
    private head: string,
    private sealedSize: number,
  ) {}

  static async open(runId: string, env: NodeJS.ProcessEnv): Promise<AuditWriter> {
    const dir = runDir(runId, env);
    const file = path.join(dir, AUDIT_FILE);
    const key = await loadAuditKey(env);
    await mkdir(dir, { recursive: true });
    const tail = await lastLine(file);
    let seq: number;
    let head: string;
    if (tail && typeof tail.seq === 'number' && typeof tail.hash === 'string') {
      seq = tail.seq;
      head = tail.hash;
    } else {
      // A new log (or one written before chaining): start with a run header.
      const header: Record<string, unknown> = { kind: 'header', format: AUDIT_FORMAT, runId, origin: checkpointOrigin(runId), createdAt: new Date().toISOString(), key: key.vkey, seq: 0, prev: null };
      header.hash = lineHash(header);
      await durableAppend(file, `${JSON.stringify(header)}\n`);
      seq = 0;
      head = header.hash as string;
    }
    const sealed = await lastCheckpointSize(path.join(dir, CHECKPOINTS_FILE));
    const writer = new AuditWriter(runId, dir, key, policy, seq, head, sealed);
    writer.armTimer();
    return writer;
  }

  append(records: AuditRecord[]): Promise<void> {
    return this.enqueue(async () => {
      if (!records.length) return;
      let text = '';
      for (const r of records) {
        this.seq += 1;
        const line: Record<string, unknown> = { ...r, aggregate: r.aggregate ?? null, seq: this.seq, prev: this.head };
        delete line.hash;
        const hash = lineHash(line);
        line.hash = hash;
        this.head = hash;
        text += `${JSON.stringify(line)}\n`;
      }
      await durableAppend(path.join(this.dir, AUDIT_FILE), text);
      if (this.seq - this.sealedSize >= this.policy.everyRecords) await this.checkpoint();
      else this.armTimer();
    });
  }

  /** Writes a checkpoint for the current head (also for an empty log: size 0 seals the header). */
  seal(force = false): Promise<void> {
    return this.enqueue(async () => {
      if (force || this.seq > this.sealedSize) await this.checkpoint();
    });
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private async checkpoint(): Promise<void> {
    const time = new Date().toISOString();
    const note = signCheckpoint(this.key, checkpointOrigin(this.runId), this.seq, this.head, time);
    await durableAppend(path.join(this.dir, CHECKPOINTS_FILE), `${JSON.stringify({ note })}\n`);
    this.sealedSize = this.seq;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  // Records wait at most `everyMs` for a seal, even when no more come.
  private armTimer(): void {
    if (this.timer || this.seq <= this.sealedSize) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.seal().catch(() => undefined);
    }, this.policy.everyMs);
    this.timer.unref();
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

/** Appends and fsyncs before returning, so that a caller may then delete what the text came from. */
async function durableAppend(file: string, text: string): Promise<void> {
  const fh = await open(file, 'a', 0o600);
  try {
    await fh.appendFile(text, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The last complete line of `file`, parsed. A line without its newline is a write torn by a
 * crash: its records were never acknowledged (the raw files still hold them), so it is cut off.
 */
async function lastLine(file: string): Promise<Record<string, unknown> | undefined> {
  if (!existsSync(file)) return undefined;
  const size = (await stat(file)).size;
  if (size === 0) return undefined;
  const fh = await open(file, 'r');
  try {
    const end = size;
    let chunk = 64 * 1024;
    for (;;) {
      const start = Math.max(0, end - chunk);
      const buf = Buffer.alloc(end - start);
      await fh.read(buf, 0, buf.length, start);
      const whole = buf;
      if (end === size && whole[whole.length - 1] !== 0x0a) {
        const nl = whole.lastIndexOf(0x0a);
        if (nl < 0 && start > 0) {
          chunk *= 2;
          continue;
        }
        await truncate(file, start + nl + 1);
        return lastLine(file);
      }
      const body = whole.subarray(0, whole.length - 1);
      const nl = body.lastIndexOf(0x0a);
      if (nl < 0 && start > 0) {
        chunk *= 2;
        continue;
      }
      try {
        return JSON.parse(body.subarray(nl + 1).toString('utf8')) as Record<string, unknown>;
      } catch {
        return undefined;
      }
    }
  } finally {
    await fh.close();
  }
}

async function lastCheckpointSize(file: string): Promise<number> {
  let size = 0;
  if (!existsSync(file)) return 0;
  const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const l of lines) {
    try {
      size = parseCheckpoint((JSON.parse(l) as { note: string }).note).size;
    } catch {
      // a damaged line: verify reports it
    }
  }
  return size;
}

const writers = new Map<string, Promise<AuditWriter>>();

function writerFor(runId: string, env: NodeJS.ProcessEnv): Promise<AuditWriter> {
  const file = auditFile(runId, env);
  let w = writers.get(file);
  if (!w) {
    w = AuditWriter.open(runId, env);
    writers.set(file, w);
    w.catch(() => writers.delete(file));
  }
  return w;
}

/** Starts the run's log (its header) if it has none yet. */
export async function openAudit(runId: string, env = process.env): Promise<void> {
  await writerFor(runId, env);
}

/** Appends records to the chain; resolves once they are on disk (fsynced). */
export async function appendAudit(runId: string, records: AuditRecord[], env = process.env): Promise<void> {
  if (!records.length) return;
  await (await writerFor(runId, env)).append(records);
}

/** At the end of a run: a final checkpoint over everything written, and the writer is let go. */
export async function sealAudit(runId: string, env = process.env): Promise<void> {
  const file = auditFile(runId, env);
  const w = writers.get(file);
  const writer = await (w ?? AuditWriter.open(runId, env));
  try {
    await writer.seal(!existsSync(path.join(runDir(runId, env), CHECKPOINTS_FILE)));
  } finally {
    writer.close();
    writers.delete(file);
  }
}

/** Every matching record, sorted by time (in memory: for exports use streamAudit). */
export async function queryAudit(query: AuditQuery, env = process.env): Promise<StoredAuditRecord[]> {
  if (query.runId && !existsSync(runDir(query.runId, env))) {
    throw new ConfigError(`No run ${query.runId} under ${path.dirname(runDir(query.runId, env))}.`, [], { hint: 'Check the run id (loopbox status lists live ones) and LOOPBOX_STATE_DIR.' });
  }
  const out: StoredAuditRecord[] = [];
  for await (const { record } of streamAudit(query, env)) out.push(record as unknown as StoredAuditRecord);
  return out;
}

export const AUDIT_TABLE_HEADER = ['TIME (UTC)', 'RUN', 'TASK', 'IT', 'KIND', 'PROTO', 'DESTINATION', 'QUERY', 'UID', 'VERDICT', 'RULE'];

/**
 * One table row. Query names and other strings come from the sandbox (hostile): control
 * characters are shown as `?`, so an escape sequence in a DNS name cannot drive the terminal.
 * Fields a record lacks (a kind this version does not know) show as `-`.
 */
export function auditRow(record: AuditRecord): string[] {
  const r = record as Partial<StoredAuditRecord>;
  const agg = r.aggregate;
  const dst = agg
    ? `${agg.distinct}${agg.distinctCapped ? '+' : ''} distinct, e.g. ${agg.sample[0] ?? '-'}`
    : r.dst ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}${r.dstPort != null ? `:${r.dstPort}` : ''}` : r.dstPort != null ? `:${r.dstPort}` : '-';
  const cells = [
    typeof r.time === 'string' ? r.time.replace('T', ' ').replace('Z', '') : '-',
    r.runId ?? '-',
    r.task ?? '-',
    r.iteration == null ? '-' : String(r.iteration),
    r.kind ?? '-',
    r.protocol ?? '-',
    dst,
    agg ? `(aggregate until ${agg.lastTime.replace('T', ' ').replace('Z', '')})` : r.query ? `${r.query} ${r.queryType ?? ''}`.trim() : '-',
    r.uid == null ? '-' : String(r.uid),
    typeof r.count === 'number' && r.count > 1 ? `${r.verdict ?? '-'} x${r.count}` : (r.verdict ?? '-'),
    r.rule ?? '-',
  ];
  return cells.map((c) => printable(String(c)));
}

/** A readable table for the terminal. */
export function formatAuditTable(records: AuditRecord[]): string {
  return formatTable(AUDIT_TABLE_HEADER, records.map(auditRow));
}

/** Column widths for a table printed row by row (a follow cannot measure rows it has not seen). */
export const AUDIT_FOLLOW_WIDTHS = [23, 24, 14, 3, 6, 6, 26, 36, 5, 9, 8];

export function formatFollowRow(cells: string[]): string {
  return cells.map((c, i) => c.padEnd(AUDIT_FOLLOW_WIDTHS[i] ?? 0)).join('  ').trimEnd();
}

export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
