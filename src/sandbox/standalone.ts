// A sandbox on its own, outside any loop (`loopbox sandbox run`): a run of its own in the runs
// directory (run.json with this process as owner, the audit log, the sentry's folder), so that
// `loopbox status`, `gc` and `audit --run` see it as they see a loop's run.
import { ConfigError } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import { runDir } from '../common/paths.js';
import type { DockerClient } from '../docker/client.js';
import { createRun, finishRun } from '../runs/registry.js';
import { type SandboxOptions, type SandboxResult, runSandbox, sandboxAuditDir } from './sandbox.js';

export interface StandaloneSandboxOptions extends Omit<SandboxOptions, 'auditDir'> {
  /** Where the sentry writes its audit files; default `<run dir>/sandboxes/adhoc` (`i<n>` with an iteration). */
  auditDir?: string | undefined;
  /** Called once the run is recorded, before any container starts (the CLI prints the run id). */
  onStart?: ((runId: string) => void) | undefined;
}

/**
 * Records the run (kind `sandbox`), runs the command in a fresh sandbox, and marks the run ended
 * whatever happens, so that gc and status never take it for a live run afterwards.
 */
export async function runStandaloneSandbox(docker: DockerClient, options: StandaloneSandboxOptions): Promise<SandboxResult> {
  const { onStart, ...sandbox } = options;
  if (!isSafeName(options.runId)) throw new ConfigError(`Run id ${JSON.stringify(options.runId)} must be lowercase letters, digits, '.', '_' or '-'.`);
  if (options.task !== undefined && !isSafeName(options.task)) throw new ConfigError(`Task name ${JSON.stringify(options.task)} must be lowercase letters, digits, '.', '_' or '-'.`);
  const env = options.stateEnv ?? process.env;
  const record = await createRun({ runId: options.runId, kind: 'sandbox', task: options.task }, env);
  onStart?.(options.runId);
  try {
    return await runSandbox(docker, { ...sandbox, auditDir: options.auditDir ?? sandboxAuditDir(runDir(options.runId, env), options.iteration) });
  } finally {
    await finishRun(record, env);
  }
}
