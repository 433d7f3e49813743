// The run's audit log: `<run dir>/audit.jsonl`, one JSON record per line, append-only.
import { existsSync } from 'node:fs';
import { appendFile, readFile } from 'node:fs/promises';
import { ConfigError } from '../common/errors.js';
import path from 'node:path';
import { runDir } from '../common/paths.js';
import { listRuns } from '../runs/registry.js';
import type { AuditRecord } from './record.js';

export const AUDIT_FILE = 'audit.jsonl';

export function auditFile(runId: string, env = process.env): string {
  return path.join(runDir(runId, env), AUDIT_FILE);
}

export async function appendAudit(runId: string, records: AuditRecord[], env = process.env): Promise<void> {
  if (!records.length) return;
  await appendFile(auditFile(runId, env), records.map((r) => JSON.stringify(r)).join('\n') + '\n', { mode: 0o600 });
}

export interface AuditQuery {
  runId?: string | undefined;
  task?: string | undefined;
  since?: Date | undefined;
}

export async function queryAudit(query: AuditQuery, env = process.env): Promise<AuditRecord[]> {
  if (query.runId && !existsSync(runDir(query.runId, env))) {
    throw new ConfigError(`No run ${query.runId} under ${path.dirname(runDir(query.runId, env))}.`, [], { hint: 'Check the run id (loopbox status lists live ones) and LOOPBOX_STATE_DIR.' });
  }
  const runIds = query.runId ? [query.runId] : (await listRuns(env)).map((r) => r.runId);
  const out: AuditRecord[] = [];
  for (const runId of runIds) {
    let text: string;
    try {
      text = await readFile(auditFile(runId, env), 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const record = JSON.parse(line) as AuditRecord;
      if (query.task && record.task !== query.task) continue;
      if (query.since && new Date(record.time) < query.since) continue;
      out.push(record);
    }
  }
  return out.sort((a, b) => a.time.localeCompare(b.time));
}

/** A readable table for the terminal. */
export function formatAuditTable(records: AuditRecord[]): string {
  const header = ['TIME (UTC)', 'RUN', 'TASK', 'IT', 'KIND', 'PROTO', 'DESTINATION', 'QUERY', 'UID', 'VERDICT', 'RULE'];
  const rows = records.map((r) => [
    r.time.replace('T', ' ').replace('Z', ''),
    r.runId,
    r.task ?? '-',
    r.iteration === null ? '-' : String(r.iteration),
    r.kind,
    r.protocol ?? '-',
    r.dst ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}${r.dstPort !== null ? `:${r.dstPort}` : ''}` : r.dstPort !== null ? `:${r.dstPort}` : '-',
    r.query ? `${r.query} ${r.queryType ?? ''}`.trim() : '-',
    r.uid === null ? '-' : String(r.uid),
    r.count > 1 ? `${r.verdict} x${r.count}` : r.verdict,
    r.rule,
  ]);
  return formatTable(header, rows);
}

export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
