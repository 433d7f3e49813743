import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where run records, audit logs and caches live on the host (never inside a sandbox). */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.LOOPBOX_STATE_DIR) return path.resolve(env.LOOPBOX_STATE_DIR);
  const base = env.XDG_STATE_HOME || path.join(homedir(), '.local', 'state');
  return path.join(base, 'loopbox');
}

export function runsDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(stateDir(env), 'runs');
}

export function runDir(runId: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(runsDir(env), runId);
}

/** The package root (holds images/ and scripts/), from src/… or dist/…. */
export function packageRoot(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
}

/** `~/x` → `<home>/x`, as a shell would (config files are written by people). */
export function expandHome(file: string): string {
  return file === '~' ? homedir() : file.startsWith('~/') ? path.join(homedir(), file.slice(2)) : file;
}
