// Reading audit logs as streams: merged by time across runs, partial lines held back until
// complete, new runs found while following, bad lines said and skipped, control characters in
// hostile query names never reach the terminal.
import { appendFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auditRow, formatAuditTable } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { type AuditLine, streamAudit } from '../../src/audit/stream.js';

let state: string;
let env: NodeJS.ProcessEnv;

beforeEach(async () => {
  state = await mkdtemp(path.join(tmpdir(), 'lbx-stream-'));
  env = { LOOPBOX_STATE_DIR: state };
});
afterEach(async () => {
  await rm(state, { recursive: true, force: true });
});

function rec(runId: string, time: string, over: Partial<AuditRecord> = {}): AuditRecord {
  return { time, runId, task: 't', iteration: 1, role: 'agent', kind: 'packet', protocol: 'tcp', family: 'ipv4', direction: 'out', src: '10.0.0.2', srcPort: 1, dst: '10.0.0.3', dstPort: 7000, uid: 1000, query: null, queryType: null, icmpType: null, verdict: 'rejected', rule: 'out-tcp', count: 1, ...over };
}

async function writeRun(runId: string, lines: string[]): Promise<string> {
  const dir = path.join(state, 'runs', runId);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'run.json'), JSON.stringify({ runId, kind: 'test', pid: process.pid, pidStart: null, hostname: 'x', startedAt: new Date().toISOString() }));
  const file = path.join(dir, 'audit.jsonl');
  await writeFile(file, lines.join(''));
  return file;
}

const line = (r: unknown): string => `${JSON.stringify(r)}\n`;

async function collect(it: AsyncIterable<AuditLine>): Promise<AuditLine[]> {
  const out: AuditLine[] = [];
  for await (const l of it) out.push(l);
  return out;
}

describe('streamAudit', () => {
  it('merges runs by time and keeps each line exactly as stored', async () => {
    await writeRun('a', [line(rec('a', '2026-01-01T00:00:01.000Z')), line(rec('a', '2026-01-01T00:00:04.000Z'))]);
    await writeRun('b', [line(rec('b', '2026-01-01T00:00:02.000Z')), line(rec('b', '2026-01-01T00:00:03.000Z')), `${JSON.stringify(rec('b', '2026-01-01T00:00:05.000Z'))}  \n`]);
    const got = await collect(streamAudit({}, env));
    expect(got.map((l) => `${l.record.runId}@${l.record.time.slice(17, 19)}`)).toEqual(['a@01', 'b@02', 'b@03', 'a@04', 'b@05']);
    expect(got[4]!.line.endsWith('  ')).toBe(true);
    expect(await collect(streamAudit({ runId: 'b', since: new Date('2026-01-01T00:00:03Z') }, env))).toHaveLength(2);
  });

  it('a hash chain\'s run header line is not a record', async () => {
    await writeRun('a', [line({ kind: 'header', format: 'loopbox-audit/1', runId: 'a', seq: 0, prev: null, hash: 'h' }), line({ ...rec('a', '2026-01-01T00:00:01.000Z'), seq: 1, prev: 'h', hash: 'i' })]);
    const got = await collect(streamAudit({}, env));
    expect(got.map((l) => l.record.seq)).toEqual([1]);
  });

  it('a bad line is reported with file and line number and skipped; the rest is read', async () => {
    await writeRun('a', [line(rec('a', '2026-01-01T00:00:01.000Z')), 'not json\n', '[1]\n', line(rec('a', '2026-01-01T00:00:02.000Z'))]);
    const warnings: string[] = [];
    const got = await collect(streamAudit({ onWarning: (m) => warnings.push(m) }, env));
    expect(got).toHaveLength(2);
    expect(warnings).toEqual([expect.stringMatching(/audit\.jsonl:2: not a JSON record/), expect.stringMatching(/audit\.jsonl:3: not a JSON record/)]);
  });

  it('following: a partial line waits for its newline, and a run that starts later is picked up', async () => {
    const fileA = await writeRun('a', [line(rec('a', '2026-01-01T00:00:01.000Z'))]);
    const ctl = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const l of streamAudit({ follow: true, pollMs: 20, signal: ctl.signal }, env)) seen.push(`${l.record.runId}@${l.record.time.slice(17, 19)}`);
    })();
    const until = async (n: number): Promise<void> => {
      for (let i = 0; i < 250 && seen.length < n; i += 1) await new Promise((r) => setTimeout(r, 20));
    };
    await until(1);
    expect(seen).toEqual(['a@01']);
    const second = line(rec('a', '2026-01-01T00:00:02.000Z'));
    await appendFile(fileA, second.slice(0, 40));
    await new Promise((r) => setTimeout(r, 150));
    expect(seen).toEqual(['a@01']); // half a line is not a record yet
    await appendFile(fileA, second.slice(40));
    await until(2);
    await writeRun('b', [line(rec('b', '2026-01-01T00:00:03.000Z'))]);
    await until(3);
    ctl.abort();
    await done;
    expect(seen).toEqual(['a@01', 'a@02', 'b@03']);
  });

  it('following one run ends once the run has ended', async () => {
    await writeRun('a', [line(rec('a', '2026-01-01T00:00:01.000Z'))]);
    await writeFile(path.join(state, 'runs', 'a', 'run.json'), JSON.stringify({ runId: 'a', kind: 'test', pid: process.pid, pidStart: null, hostname: 'x', startedAt: '2026-01-01T00:00:00Z', endedAt: '2026-01-01T00:01:00Z' }));
    const got = await collect(streamAudit({ runId: 'a', follow: true, pollMs: 20 }, env));
    expect(got).toHaveLength(1);
  });

  it('a file that shrinks while followed is reported, not re-read', async () => {
    const file = await writeRun('a', [line(rec('a', '2026-01-01T00:00:01.000Z')), line(rec('a', '2026-01-01T00:00:02.000Z'))]);
    const ctl = new AbortController();
    const warnings: string[] = [];
    const seen: AuditLine[] = [];
    const done = (async () => {
      for await (const l of streamAudit({ follow: true, pollMs: 20, signal: ctl.signal, onWarning: (m) => warnings.push(m) }, env)) seen.push(l);
    })();
    await new Promise((r) => setTimeout(r, 100));
    await writeFile(file, line(rec('a', '2026-01-01T00:00:09.000Z')));
    for (let i = 0; i < 100 && !warnings.length; i += 1) await new Promise((r) => setTimeout(r, 20));
    ctl.abort();
    await done;
    expect(seen).toHaveLength(2);
    expect(warnings.join()).toMatch(/shrank/);
  });

  it('an escape sequence in a hostile DNS name is shown as ? in the table', () => {
    const r = rec('a', '2026-01-01T00:00:01.000Z', { kind: 'dns', query: '\u001b]0;owned\u0007x.invalid', queryType: 'A' });
    expect(auditRow(r).join(' ')).not.toContain('\u001b');
    expect(auditRow(r).join(' ')).not.toContain('\u0007');
    expect(formatAuditTable([r])).toContain('?]0;owned?x.invalid A');
  });

  it('a record of a kind this version does not know still makes a table row', () => {
    expect(auditRow({ time: '2026-01-01T00:00:01.000Z', runId: 'a', kind: 'model-request' } as unknown as AuditRecord)).toEqual(['2026-01-01 00:00:01.000', 'a', '-', '-', 'model-request', '-', '-', '-', '-', '-', '-']);
  });
});
