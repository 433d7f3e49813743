// Reading audit logs as streams: records come out one at a time, merged by time across runs, so
// that an export of a run with millions of records never holds the log in memory, and `--follow`
// can keep reading each file from where it stopped.
import { existsSync } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError } from '../common/errors.js';
import { runDir, runsDir } from '../common/paths.js';
import { isRunAlive, readRun } from '../runs/registry.js';
import type { AuditQuery } from './log.js';
import { AUDIT_FILE, type AuditRecord } from './record.js';

/** A record as stored: the known fields, plus whatever a newer writer added (passed through). */
export type StoredRecord = AuditRecord & Record<string, unknown>;

export interface AuditLine {
  record: StoredRecord;
  /** The line exactly as stored, without its newline. */
  line: string;
  file: string;
}

export interface StreamOptions extends AuditQuery {
  /** Keep reading: new lines of known files, and (without `runId`) new runs' files. */
  follow?: boolean;
  /** How often a follow looks for new lines (default 200 ms). */
  pollMs?: number;
  signal?: AbortSignal;
  /** A line that is not a JSON record, or a file that shrank: said, skipped, never fatal. */
  onWarning?: (message: string) => void;
}

const CHUNK = 64 * 1024;

/** One audit file, read forward from a byte offset; only complete lines are consumed. */
class AuditFile {
  offset = 0;
  lineNo = 0;
  constructor(readonly file: string) {}

  /** The lines written since the last call (complete lines only), then it stops at EOF. */
  async *lines(warn: (m: string) => void): AsyncGenerator<{ line: string; lineNo: number }> {
    let size: number;
    try {
      size = (await stat(this.file)).size;
    } catch {
      return; // not written yet
    }
    if (size < this.offset) {
      warn(`${this.file} shrank from ${this.offset} to ${size} bytes (truncated or replaced); reading on from its new end`);
      this.offset = size;
      return;
    }
    if (size === this.offset) return;
    const fh = await open(this.file, 'r');
    try {
      const buf = Buffer.alloc(CHUNK);
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      let pos = this.offset;
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, CHUNK, pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
        let start = 0;
        for (let nl = buf.indexOf(10, 0); nl !== -1 && nl < bytesRead; nl = buf.indexOf(10, start)) {
          const piece = buf.subarray(start, nl);
          const text = pendingBytes ? Buffer.concat([...pending, piece]).toString('utf8') : piece.toString('utf8');
          this.offset += pendingBytes + piece.length + 1;
          pending = [];
          pendingBytes = 0;
          start = nl + 1;
          this.lineNo += 1;
          if (text.trim()) yield { line: text, lineNo: this.lineNo };
        }
        if (start < bytesRead) {
          // A partial line: kept for now, consumed once its newline is written.
          pending.push(Buffer.from(buf.subarray(start, bytesRead)));
          pendingBytes += bytesRead - start;
        }
      }
    } finally {
      await fh.close();
    }
  }

  async *records(query: AuditQuery, warn: (m: string) => void): AsyncGenerator<AuditLine> {
    for await (const { line, lineNo } of this.lines(warn)) {
      let record: StoredRecord;
      try {
        record = JSON.parse(line) as StoredRecord;
        if (!record || typeof record !== 'object' || Array.isArray(record)) throw new Error('not an object');
      } catch {
        warn(`${this.file}:${lineNo}: not a JSON record, skipped (loopbox audit verify checks the log)`);
        continue;
      }
      // The hash chain's run header (kind `header`) is the log's, not an attempt: `audit verify` reads it.
      if (record.kind === ('header' as string)) continue;
      if (query.task && record.task !== query.task) continue;
      if (query.since && !(typeof record.time === 'string' && new Date(record.time) >= query.since)) continue;
      yield { record, line, file: this.file };
    }
  }

  /** The time of the first record, to decide when to open this file in a merge. */
  async firstTime(): Promise<string | undefined> {
    try {
      const fh = await open(this.file, 'r');
      try {
        const buf = Buffer.alloc(4096);
        const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
        const m = /"time":"([^"]+)"/.exec(buf.subarray(0, bytesRead).toString('utf8'));
        return m?.[1] ?? '';
      } finally {
        await fh.close();
      }
    } catch {
      return undefined;
    }
  }
}

const timeOf = (l: AuditLine): string => (typeof l.record.time === 'string' ? l.record.time : '');

/**
 * The audit records matching `query`, sorted by time across runs (each run's file is already in
 * time order), read as a stream. With `follow`, it then yields new records as they are written
 * until `signal` aborts, or, with `runId`, until that run has ended and its last lines are read.
 */
export async function* streamAudit(options: StreamOptions, env = process.env): AsyncGenerator<AuditLine> {
  const warn = options.onWarning ?? (() => undefined);
  if (options.runId && !existsSync(runDir(options.runId, env))) {
    throw new ConfigError(`No run ${options.runId} under ${path.dirname(runDir(options.runId, env))}.`, [], { hint: 'Check the run id (loopbox status lists live ones) and LOOPBOX_STATE_DIR.' });
  }
  const files = new Map<string, AuditFile>();
  const discover = async (): Promise<AuditFile[]> => {
    const ids = options.runId ? [options.runId] : await readdir(runsDir(env)).catch(() => [] as string[]);
    const added: AuditFile[] = [];
    for (const id of ids.sort()) {
      if (files.has(id)) continue;
      const f = new AuditFile(path.join(runDir(id, env), AUDIT_FILE));
      // In a follow, a run directory without a log yet is watched too (it may be a loop starting).
      if (!options.follow && !existsSync(f.file)) continue;
      files.set(id, f);
      added.push(f);
    }
    return added;
  };

  yield* mergeByTime(await discover(), options, warn);
  if (!options.follow) return;

  const pollMs = options.pollMs ?? 200;
  for (;;) {
    let ended = false;
    if (options.runId) {
      const run = await readRun(options.runId, env);
      ended = !run || !isRunAlive(run);
    }
    if (!options.runId) await discover();
    // New lines of every file in this round, in time order (a round is short: no memory issue).
    const batch: AuditLine[] = [];
    for (const f of files.values()) for await (const l of f.records(options, warn)) batch.push(l);
    batch.sort((a, b) => (timeOf(a) < timeOf(b) ? -1 : timeOf(a) > timeOf(b) ? 1 : 0));
    yield* batch;
    if (ended || options.signal?.aborted) return;
    try {
      await sleep(pollMs, undefined, { signal: options.signal });
    } catch {
      return; // aborted
    }
  }
}

/** A k-way merge of already sorted files; a file is opened only once the merge reaches its first record. */
async function* mergeByTime(sources: AuditFile[], query: AuditQuery, warn: (m: string) => void): AsyncGenerator<AuditLine> {
  const pending: Array<{ f: AuditFile; first: string }> = [];
  for (const f of sources) {
    const first = await f.firstTime();
    if (first !== undefined) pending.push({ f, first });
  }
  pending.sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  const heads: Array<{ it: AsyncGenerator<AuditLine>; cur: AuditLine }> = [];
  const advance = async (it: AsyncGenerator<AuditLine>): Promise<void> => {
    const n = await it.next();
    if (!n.done) heads.push({ it, cur: n.value });
  };
  try {
    for (;;) {
      let min = heads.reduce<number>((m, h, i) => (m < 0 || timeOf(h.cur) < timeOf(heads[m]!.cur) ? i : m), -1);
      while (pending.length && (min < 0 || pending[0]!.first <= timeOf(heads[min]!.cur))) {
        await advance(pending.shift()!.f.records(query, warn));
        min = heads.reduce<number>((m, h, i) => (m < 0 || timeOf(h.cur) < timeOf(heads[m]!.cur) ? i : m), -1);
      }
      if (min < 0) return;
      const [head] = heads.splice(min, 1);
      yield head!.cur;
      await advance(head!.it);
    }
  } finally {
    for (const h of heads) await h.it.return(undefined);
  }
}
