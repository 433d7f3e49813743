// The verify command on the task's base commit, once per loop run, in the same clean container
// as every iteration's: which tests pass before the agent did anything.
import { ConfigError } from '../common/errors.js';
import { type Baseline, makeBaseline } from './accounting.js';
import type { VerifyOptions, VerifyResult } from './verify.js';

/** `runVerify`: where the verify container runs (the loop's backend). */
export async function runBaseline(runVerify: (options: VerifyOptions) => Promise<VerifyResult>, options: VerifyOptions): Promise<Baseline> {
  const result = await runVerify(options);
  const baseline = makeBaseline(result);
  // A report that never comes would fail every iteration: say so now, before any agent runs.
  if (options.report && baseline.reportProblem && !options.signal?.aborted) {
    throw new ConfigError(`verify.report is set, but verify on the base commit gave no usable report (it ${result.timedOut ? 'timed out' : `exited ${result.exitCode}`}): ${baseline.reportProblem}`, [], {
      hint: 'The verify command must make the runner write that report (see the presets in docs/configuration.md), or remove verify.report to verify by exit code only.',
    });
  }
  return baseline;
}
