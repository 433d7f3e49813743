// One read of a sentry's audit folder, in the one order that loses nothing: ingest what the
// firewall's logger and the DNS front wrote past the cursor, append those records to the run's
// chained audit log (fsynced), and only then save the new position; the same for the model
// gateway's file (refusals to the audit log, requests to model.jsonl) by its own cursor. A crash
// anywhere in between reads the same lines again next time, never skips one. The sentry's
// collect after each agent, its last read at stop and the recovery of a crashed run's folder
// all go through `collect`.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { appendAudit } from '../audit/log.js';
import type { SandboxIdentity } from '../audit/record.js';
import { writeJsonAtomic } from '../common/files.js';
import { type ModelUsage, appendModelRequests, readGatewayRecords } from './gateway-records.js';
import { type AuditCursor, type IngestResult, START_CURSOR, type SentryCounters, ingestSandboxAudit } from './ingest.js';

/** The sentry's read position, saved after each collect so a crashed run loses no record. */
const CURSOR_FILE = '.cursor.json';
/** The read position in the model gateway's file, apart from the firewall's cursor. */
const FRONTS_CURSOR_FILE = '.fronts-cursor.json';

/** Where the next read of a sentry's folder starts: the firewall's files, and the gateway's. */
export interface CollectCursor {
  audit: AuditCursor;
  gateway: number;
}

export const START_COLLECT_CURSOR: CollectCursor = { audit: START_CURSOR, gateway: 0 };

/** What one collect attributes: the firewall's records and the gateway's tokens. */
export interface CollectResult extends IngestResult {
  model: ModelUsage;
}

export interface CollectOptions {
  identity: SandboxIdentity;
  /** The sentry's counters read just before (loss is judged against them); none after a crash. */
  counters: SentryCounters | undefined;
  /** Host names the DNS front answers (they are not refusals). */
  answered: string[];
  /** The model's address, for the gateway's refusal records. */
  model?: { ip: string; port: number } | undefined;
  stateEnv?: NodeJS.ProcessEnv | undefined;
  recordLimit?: number | undefined;
}

/** Reads the folder `dir` from `cursor` on; returns what it attributed and the next cursor (saved in `dir`). */
export async function collect(dir: string, cursor: CollectCursor, options: CollectOptions): Promise<{ result: CollectResult; cursor: CollectCursor }> {
  const { identity, stateEnv: env, recordLimit } = options;
  const ingested = await ingestSandboxAudit(dir, identity, 'agent', options.counters, options.answered, cursor.audit, { recordLimit });
  // Durable (fsynced) before the read position moves past the raw lines.
  await appendAudit(identity.runId, ingested.records, env);
  await writeJsonAtomic(path.join(dir, CURSOR_FILE), ingested.cursor);
  const gw = await readGatewayRecords(dir, identity, 'agent', cursor.gateway, options.model, recordLimit);
  await appendAudit(identity.runId, gw.audit, env);
  await appendModelRequests(identity.runId, gw.requests, env);
  await writeJsonAtomic(path.join(dir, FRONTS_CURSOR_FILE), { gateway: gw.offset });
  return { result: { ...ingested, model: gw.usage }, cursor: { audit: ingested.cursor, gateway: gw.offset } };
}

/** The cursor saved in `dir` by the last collect; the start where none was saved. */
export async function savedCursor(dir: string): Promise<CollectCursor> {
  const read = async <T>(file: string): Promise<Partial<T>> => {
    try {
      return JSON.parse(await readFile(path.join(dir, file), 'utf8')) as Partial<T>;
    } catch {
      return {}; // never collected: everything is left over
    }
  };
  const fronts = await read<{ gateway: number }>(FRONTS_CURSOR_FILE);
  return { audit: { ...START_CURSOR, ...(await read<AuditCursor>(CURSOR_FILE)) }, gateway: fronts.gateway ?? 0 };
}
