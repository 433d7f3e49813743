// `loopbox run`: one loop per task file; progress on stderr, events as JSON lines with --json.
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { formatTable } from '../audit/log.js';
import { ConfigError } from '../common/errors.js';
import { loadConfig } from '../config/load.js';
import { type LoopEvent, type LoopSummary, runLoop } from '../loop/loop.js';
import { resolveTaskFiles } from '../loop/tasks.js';
import { type CliContext, err, out } from './context.js';
import type { ProgramResult } from './program.js';

const positiveInt = (v: string): number => {
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`expected a positive integer, got "${v}"`);
  return Number(v);
};

export function registerRun(program: Command, ctx: CliContext, result: ProgramResult, configFile: () => string | undefined): void {
  program
    .command('run')
    .description('run the loop for each task file until verification passes or a brake stops it')
    .argument('[tasks...]', 'task files (default: the config\'s `tasks` globs)')
    .option('--repo <dir>', 'the git repository to work on', '.')
    .option('--resume <run>', 'continue a run that crashed or was killed')
    .option('--max-iterations <n>', 'override loop.maxIterations', positiveInt)
    .option('--allow-dirty', 'start even if the repository has uncommitted changes (they are not part of the task branch)')
    .option('--json', 'print one JSON event per line on stdout')
    .addHelpText(
      'after',
      `
End states and exit codes: done 0, error 1, bad input 2, capped 3, stalled 4, timed-out-budget 5, aborted 130.

Example:
  loopbox run tasks/fix-login.md --max-iterations 8
`,
    )
    .action(async (tasks: string[], opts: { repo: string; resume?: string; maxIterations?: number; allowDirty?: boolean; json?: boolean }) => {
      const { config } = await loadConfig({ file: configFile(), dir: opts.repo });
      if (opts.maxIterations) config.loop.maxIterations = opts.maxIterations;
      const files = opts.resume ? [undefined] : tasks.length ? tasks : await resolveTaskFiles(opts.repo, config.tasks);
      if (!files.length) throw new ConfigError('No task files found.', [], { hint: `Pass one (loopbox run tasks/x.md) or add files matching ${config.tasks.join(', ')}; \`loopbox init\` writes an example.` });
      const summaries: LoopSummary[] = [];
      for (const taskFile of files) {
        if (ctx.signal.aborted) break;
        const summary = await runLoop(ctx.docker, {
          repo: opts.repo,
          taskFile,
          config,
          resume: opts.resume,
          allowDirty: opts.allowDirty ?? false,
          signal: ctx.signal,
          onEvent: (e) => (opts.json ? out(JSON.stringify(e)) : printLoopEvent(e)),
        });
        summaries.push(summary);
      }
      if (!opts.json) err(`\n${summaryTable(summaries)}`);
      result.exitCode = summaries.reduce((code, s) => Math.max(code, s.exitCode), 0);
    });
}

export function printLoopEvent(e: LoopEvent): void {
  const tty = process.stderr.isTTY;
  switch (e.type) {
    case 'loop-start':
      err(`loopbox: run ${e.runId} task ${e.task} on branch ${e.branch}${e.resumedAt ? ` (resuming after iteration ${e.resumedAt})` : ''}`);
      err(`         worktree ${e.worktree}`);
      break;
    case 'iteration-start':
      if (tty) process.stderr.write(`[${e.task}] iteration ${e.iteration}: agent running…\r`);
      break;
    case 'iteration-end': {
      const r = e.record;
      const agent = r.agent.timedOut ? 'agent timed out' : `agent exit ${r.agent.exitCode}`;
      const verify = r.verify ? (r.verify.passed ? 'verify PASS' : `verify FAIL (${r.verify.timedOut ? 'timeout' : `exit ${r.verify.exitCode}`})`) : 'not verified';
      const blocked = r.audit.blockedPackets + r.audit.dnsBlocked;
      err(
        `${tty ? '\x1b[2K' : ''}[${e.task}] iteration ${r.iteration}: ${agent} in ${(r.agent.durationMs / 1000).toFixed(1)} s, ` +
          `${r.filesChanged.length} file(s) changed${r.protectedViolations.length ? `, ${r.protectedViolations.length} protected reverted` : ''}, ` +
          `${verify}${r.commit ? `, commit ${r.commit.slice(0, 8)}` : ''}, ${r.tokens} tokens, ${blocked} blocked`,
      );
      break;
    }
    case 'loop-end':
      err(`[${e.summary.task}] ${e.summary.endState}: ${e.summary.reason}`);
      break;
  }
}

export function summaryTable(summaries: LoopSummary[]): string {
  return formatTable(
    ['TASK', 'END STATE', 'ITERATIONS', 'WALL', 'TOKENS', 'BLOCKED', 'VERIFIED COMMIT', 'RUN'],
    summaries.map((s) => [
      s.task,
      s.endState,
      String(s.iterations),
      `${(s.wallMs / 1000).toFixed(1)} s`,
      String(s.tokens),
      String(s.blocked),
      s.verifiedCommit ? s.verifiedCommit.slice(0, 10) : '-',
      s.runId,
    ]),
  );
}
