// `loopbox demo`: the whole product on this machine, then where to look. Wiring only; the demo is
// in src/demo.
import type { Command } from 'commander';
import { loadConfig, packageVersion, runDemo, writeReports } from '../index.js';
import { type CliContext, err, out } from './context.js';
import { type ProgramResult, collect, example } from './options.js';
import { printLoopEvent, summaryTable } from './print.js';

export function registerDemo(program: Command, ctx: CliContext, result: ProgramResult, configFile: () => string | undefined): void {
  program
    .command('demo')
    .description('the whole product on this machine: images, a model server, an example repo, two loops (one ends done, one is stopped by a brake)')
    .option('--gguf <file>', 'use a real GGUF model; then both tasks run OpenCode')
    .option('--ca-cert <file>', 'extra CA certificate (PEM) for image builds; repeatable; added to images.caCerts and NODE_EXTRA_CA_CERTS', collect, [])
    .option('--keep-model', 'leave the model server running afterwards')
    .option('--review-endpoint <url>', 'ask this OpenAI-compatible reviewer before the first task may end done (review: in loopbox.yaml)')
    .option('--review-model <name>', 'the reviewer model to ask for', 'reviewer')
    .option('--review-key-env <name>', 'the environment variable that holds the reviewer key')
    .option('--json', 'print one JSON event per line on stdout')
    .addHelpText('after', example('npm run demo   # = loopbox demo'))
    .action(async (opts: { gguf?: string; caCert: string[]; keepModel?: boolean; json?: boolean; reviewEndpoint?: string; reviewModel: string; reviewKeyEnv?: string }) => {
      const { config } = await loadConfig({ file: configFile() });
      const res = await runDemo(ctx.docker, {
        gguf: opts.gguf,
        caCerts: [...config.images.caCerts, ...opts.caCert],
        mirror: config.images.mirror,
        signal: ctx.signal,
        keepModel: opts.keepModel ?? false,
        review: opts.reviewEndpoint ? { endpoint: opts.reviewEndpoint, model: opts.reviewModel, apiKeyEnv: opts.reviewKeyEnv } : undefined,
        say: (line) => err(line),
        onEvent: (e) => (opts.json ? out(JSON.stringify(e)) : printLoopEvent(e)),
      });
      err(`\n${summaryTable(res.summaries)}\n`);
      const [first, second] = res.summaries;
      const lines = ['Where to look (from this checkout, `loopbox` is `node dist/cli/main.js`, or run `npm link` once):', `  example repo:     ${res.repo}`];
      if (first) lines.push(`  verified commit:  git -C ${res.repo} log --format='%h %s%n%b' ${first.branch}`, `  iterations:       ${first.runDir}/iterations.jsonl`);
      if (second) lines.push(`  blocked egress:   loopbox audit --run ${second.runId}`, `  OpenCode run:     ${second.runDir}`);
      err(lines.join('\n'));
      if (second) err(`\nBlocked egress of ${second.task}:\n${res.auditTable}`);
      for (const r of await writeReports(res.summaries.map((x) => x.runId), { version: packageVersion() })) err(r.file ? `report: ${r.file}` : `report of ${r.runId}: not written (${r.error})`);
      // With a reviewer, `done` depends on its verdict (the fixture model's noise never approves).
      const firstOk = first?.endState === 'done' || (opts.reviewEndpoint !== undefined && first !== undefined && first.endState !== 'error');
      result.exitCode = firstOk && second && second.endState !== 'error' ? 0 : 1;
    });
}
