// `loopbox doctor`: the engine, the NVIDIA runtime, which project images exist, and the delivery
// prerequisites the config asks for. Wiring only; the checks are in src/doctor.ts.
import path from 'node:path';
import type { Command } from 'commander';
import { doctor, loadConfig } from '../index.js';
import { type CliContext, out } from './context.js';
import { example } from './options.js';

export function registerDoctor(program: Command, ctx: CliContext, configFile: () => string | undefined): void {
  program
    .command('doctor')
    .description('report the Docker engine (version, API, storage driver), NVIDIA runtime, which project images exist, and the delivery prerequisites the config asks for (gh, push remote, notify secret)')
    .option('--json', 'print JSON')
    .option('--repo <dir>', 'repository whose push remote is checked', '.')
    .addHelpText('after', example('loopbox doctor --json'))
    .action(async (opts: { json?: boolean; repo: string }) => {
      const report = await doctor(ctx.docker, { config: (await loadConfig({ file: configFile(), dir: opts.repo })).config, repo: path.resolve(opts.repo) });
      if (opts.json) return out(JSON.stringify(report, null, 2));
      const e = report.engine;
      out(
        [
          `engine:          Docker ${e.serverVersion} (API ${e.apiVersion}), ${e.operatingSystem}`,
          `storage driver:  ${e.storageDriver}`,
          `cgroup:          v${e.cgroupVersion || '?'}`,
          `nvidia runtime:  ${report.nvidiaRuntime ? 'present (GPU model server possible)' : 'absent (CPU model server)'}`,
          'images:',
          ...report.images.map((i) => `  ${i.present ? 'ok     ' : 'missing'} ${i.ref}`),
          ...(report.images.every((i) => i.present) ? [] : ['run `loopbox images build` to build the missing images']),
          ...(report.delivery.length ? ['delivery:', ...report.delivery.map((c) => `  ${c.ok ? 'ok     ' : 'PROBLEM'} ${c.name}: ${c.detail}${c.ok || !c.hint ? '' : `\n          ${c.hint}`}`)] : []),
        ].join('\n'),
      );
    });
}
