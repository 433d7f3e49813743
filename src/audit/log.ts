// The run's audit log: `<run dir>/audit.jsonl`, one JSON record per line, append-only.
import { appendFile } from 'node:fs/promises';
import path from 'node:path';
import { runDir } from '../common/paths.js';
import { AUDIT_FILE, type AuditRecord } from './record.js';
import { streamAudit } from './stream.js';

export { AUDIT_FILE };

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

/** Every matching record, sorted by time (in memory: for exports use streamAudit). */
export async function queryAudit(query: AuditQuery, env = process.env): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const { record } of streamAudit(query, env)) out.push(record);
  return out;
}

export const AUDIT_TABLE_HEADER = ['TIME (UTC)', 'RUN', 'TASK', 'IT', 'KIND', 'PROTO', 'DESTINATION', 'QUERY', 'UID', 'VERDICT', 'RULE'];

/**
 * One table row. Query names and other strings come from the sandbox (hostile): control
 * characters are shown as `?`, so an escape sequence in a DNS name cannot drive the terminal.
 * Fields a record lacks (a kind this version does not know) show as `-`.
 */
export function auditRow(record: AuditRecord): string[] {
  const r = record as Partial<AuditRecord>;
  const dst = r.dst ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}${r.dstPort != null ? `:${r.dstPort}` : ''}` : r.dstPort != null ? `:${r.dstPort}` : '-';
  const cells = [
    typeof r.time === 'string' ? r.time.replace('T', ' ').replace('Z', '') : '-',
    r.runId ?? '-',
    r.task ?? '-',
    r.iteration == null ? '-' : String(r.iteration),
    r.kind ?? '-',
    r.protocol ?? '-',
    dst,
    r.query ? `${r.query} ${r.queryType ?? ''}`.trim() : '-',
    r.uid == null ? '-' : String(r.uid),
    typeof r.count === 'number' && r.count > 1 ? `${r.verdict ?? '-'} x${r.count}` : (r.verdict ?? '-'),
    r.rule ?? '-',
  ];
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  return cells.map((c) => String(c).replace(/[\u0000-\u001f\u007f-\u009f]/g, '?'));
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
