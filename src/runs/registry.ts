// A run's directory on the host: `run.json` (who owns it: pid + the process's start time, so a
// recycled pid is not mistaken for a live run), its audit log, and per-sandbox folders.
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { writeJsonAtomic } from '../common/files.js';
import { runDir, runsDir } from '../common/paths.js';
import { isProcessAlive, processStartTime } from '../common/process.js';

// Moved to common/ (files.ts, process.ts); re-exported for the callers that import them from here.
export { writeJsonAtomic } from '../common/files.js';
export { isProcessAlive, processStartTime } from '../common/process.js';

export interface RunRecord {
  runId: string;
  kind: 'sandbox' | 'loop' | 'test' | 'model';
  task?: string | undefined;
  pid: number;
  /** Start time of `pid` as the kernel reports it (/proc/<pid>/stat field 22), or null off Linux. */
  pidStart: string | null;
  hostname: string;
  startedAt: string;
  endedAt?: string;
  trigger?: string;
  /** Written when a loop is queued; cleared when it starts. */
  queued?: boolean;
}

export async function createRun(record: Omit<RunRecord, 'pid' | 'pidStart' | 'startedAt' | 'hostname'>, env = process.env): Promise<RunRecord> {
  const full: RunRecord = {
    ...record,
    pid: process.pid,
    pidStart: processStartTime(process.pid),
    hostname: hostname(),
    startedAt: new Date().toISOString(),
  };
  const dir = runDir(record.runId, env);
  await mkdir(dir, { recursive: true });
  await writeJsonAtomic(path.join(dir, 'run.json'), full);
  return full;
}

export async function finishRun(record: RunRecord, env = process.env): Promise<void> {
  await writeJsonAtomic(path.join(runDir(record.runId, env), 'run.json'), { ...record, endedAt: new Date().toISOString() });
}

export async function readRun(runId: string, env = process.env): Promise<RunRecord | undefined> {
  try {
    return JSON.parse(await readFile(path.join(runDir(runId, env), 'run.json'), 'utf8')) as RunRecord;
  } catch {
    return undefined;
  }
}

export async function listRuns(env = process.env): Promise<RunRecord[]> {
  let names: string[];
  try {
    names = await readdir(runsDir(env));
  } catch {
    return [];
  }
  const runs = await Promise.all(names.map((n) => readRun(n, env)));
  return runs.filter((r): r is RunRecord => r !== undefined).sort((a, b) => a.startedAt.localeCompare(b.startedAt));
}

/** A run is alive when it has not ended and its process still exists with the same start time. */
export function isRunAlive(record: RunRecord | undefined, hostname = currentHostname()): boolean {
  if (!record || record.endedAt) return false;
  if (record.hostname !== hostname) return true; // another machine's run: never ours to judge
  return isProcessAlive(record.pid, record.pidStart);
}

function currentHostname(): string {
  return hostname();
}
