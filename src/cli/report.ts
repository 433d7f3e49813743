// `loopbox report RUN [-o FILE]`: one self-contained HTML page about a loop run.
import type { Command } from 'commander';
import { packageVersion, writeReport } from '../index.js';
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
