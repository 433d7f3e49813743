// `loopbox init`: a commented loopbox.yaml, AGENTS.md and an example task, with the verify command
// and image for the test setup found. Wiring only; the work is in src/config/init.ts.
import path from 'node:path';
import { type Command, Option } from 'commander';
import { initProject, type Toolchain, TOOLCHAINS, VERIFY_PROFILES, verifyImageFor } from '../index.js';
import { out } from './context.js';
import { example } from './options.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('write a commented loopbox.yaml, an AGENTS.md skill file and tasks/example.md; propose the verify command and image for the test setup found (npm, pytest, go, cargo)')
    .option('--dir <dir>', 'where to write them', '.')
    .option('--force', 'overwrite existing files')
    .addOption(new Option('--toolchain <name>', 'use this toolchain\'s verify command and image instead of the one detected').choices([...TOOLCHAINS]))
    .addHelpText('after', example('loopbox init && $EDITOR tasks/example.md'))
    .action(async (opts: { dir: string; force?: boolean; toolchain?: Toolchain }) => {
      const res = await initProject(opts.dir, { force: opts.force ?? false, toolchain: opts.toolchain });
      for (const f of res.written) out(`wrote ${path.join(opts.dir, f)}`);
      const d = res.detected;
      if (!d) {
        out('no test setup detected (package.json with a "test" script, pytest.ini, pyproject.toml, go.mod, Cargo.toml):');
        out('  verify.command is node --test with its node-test report (test accounting), run in the agent image (Node 18; no npm, Python, Go or Rust). Edit loopbox.yaml.');
        return;
      }
      out(d.evidence === '--toolchain' ? `using ${d.toolchain} (--toolchain; no ${d.toolchain} test setup found)` : `detected ${d.toolchain}: ${d.evidence}`);
      if (res.found.length > 1) out(`  also found: ${res.found.filter((f) => f.toolchain !== d.toolchain).map((f) => `${f.toolchain} (${f.evidence})`).join(', ')}; pass --toolchain to pick another`);
      out(`  verify.command: ${JSON.stringify(VERIFY_PROFILES[d.toolchain].command)}`);
      out(`  verify.report:  ${VERIFY_PROFILES[d.toolchain].report ?? 'none (exit code only; see docs/configuration.md#test-accounting-verifyreport)'}`);
      out(`  verify.image:   ${verifyImageFor(d.toolchain)} (the default agent image cannot run it); build it with:`);
      out(`    loopbox images build --toolchain ${d.toolchain}`);
    });
}
