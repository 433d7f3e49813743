// `loopbox report RUN [-o FILE]`: one self-contained HTML page about a loop run.
import type { Command } from 'commander';
import { packageVersion } from '../common/version.js';
import { writeReport } from '../report/report.js';
import { out } from './context.js';

export function registerReport(program: Command): void {
  program
    .command('report')
    .description('write a self-contained HTML report of a loop run: end state, iterations, verified commit, blocked egress, model usage')
    .argument('<run>', 'run id (the summary table of `loopbox run` prints it)')
    .option('-o, --output <file>', 'where to write it (default: <run dir>/report.html)')
    .addHelpText('after', '\nExample:\n  loopbox report 20261124-184605-8c8971 -o fix-login.html && xdg-open fix-login.html\n')
    .action(async (run: string, opts: { output?: string }) => {
      out(await writeReport(run, { out: opts.output, version: packageVersion() }));
    });
}

/** For `loopbox run` and `demo`: the report of each finished run, or why there is none. */
export async function reportPaths(runIds: string[]): Promise<Array<{ runId: string; file?: string; error?: string }>> {
  const res = [];
  for (const runId of runIds) {
    try {
      res.push({ runId, file: await writeReport(runId, { version: packageVersion() }) });
    } catch (error) {
      res.push({ runId, error: error instanceof Error ? error.message.split('\n')[0] : String(error) });
    }
  }
  return res;
}
