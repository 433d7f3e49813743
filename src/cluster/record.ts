// The host's record of a loop it submitted to the swarm: `<run dir>/swarm.json`, written by the
// host only (after the run folder is unpacked it is written again, so a runner cannot replace it).
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runDir } from '../common/paths.js';

/** The host's note of a loop it submitted: `<run dir>/swarm.json`. */
export interface SwarmRecord {
  runId: string;
  task: string;
  service: string;
  serviceId: string;
  submittedAt: string;
  node?: string | undefined;
  state: string;
  endedAt?: string | undefined;
  reason?: string | undefined;
  /** The verifier key of the run's audit signing key (the host made the key; the runner got it as a secret). */
  verifierKey?: string | undefined;
  /** Where the job clones from and pushes to, the host's repository and the base: for `swarm stop`. */
  gitUrl?: string | undefined;
  repo?: string | undefined;
  baseCommit?: string | undefined;
}

export const SWARM_RECORD = 'swarm.json';

export async function saveRecord(record: SwarmRecord, env: NodeJS.ProcessEnv): Promise<void> {
  const dir = runDir(record.runId, env);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, SWARM_RECORD), `${JSON.stringify(record, null, 2)}\n`);
}

export async function readRecord(runId: string, env: NodeJS.ProcessEnv = process.env): Promise<SwarmRecord | undefined> {
  try {
    return JSON.parse(await readFile(path.join(runDir(runId, env), SWARM_RECORD), 'utf8')) as SwarmRecord;
  } catch {
    return undefined;
  }
}

