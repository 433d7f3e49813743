// `loopbox run`: one loop per task file; progress on stderr, events as JSON lines with --json.
import path from 'node:path';
import type { Command } from 'commander';
import { checkDeliveryConfig, checkRepoAndModel, type Config, ConfigError, deliverRun, packageVersion, withPushRemote, formatTable, loadConfig, loadTask, type LoopEvent, LoopRunner, loopStatus, type LoopSummary, modelStatus, reapDeadRunContainers, recordedConfig, resolveTaskFiles, runDir, runLoop, stopLoops, writeReports } from '../index.js';
import { type CliContext, err, out } from './context.js';
import { type ProgramResult, positiveInt } from './options.js';
import { printLoopEvent, summaryTable } from './print.js';
import { runSwarmCommand, swarmStatusLines } from './swarm.js';

export function registerRun(program: Command, ctx: CliContext, result: ProgramResult, configFile: () => string | undefined): void {
  program
    .command('run')
    .description('run the loop for each task file until verification passes or a brake stops it')
    .argument('[tasks...]', 'task files (default: the config\'s `tasks` globs)')
    .option('--repo <dir>', 'the git repository to work on', '.')
    .option('--resume <run>', 'continue a run that crashed or was killed')
    .option('--max-iterations <n>', 'override loop.maxIterations', positiveInt)
    .option('--concurrency <n>', 'loops at once (default: the model server\'s slots); agents never exceed the slots', positiveInt)
    .option('--allow-dirty', 'start even if the repository has uncommitted changes (they are not part of the task branch)')
    .option('--json', 'print one JSON event per line on stdout')
    .option('--push [remote]', 'after each loop, push the verified commit to loopbox/<task> on this remote (default: loop.push.remote, else origin)')
    .option('--swarm', 'run each task as a Docker Swarm job on the nodes labelled loopbox.model=ready (as cluster.mode: swarm; docs/scaling.md)')
    .option('--render <kind>', 'print what --swarm would run as manifests instead (k8s: a Kubernetes Job per task); starts nothing')
    .addHelpText(
      'after',
      `
End states and exit codes: done 0, error 1, bad input 2, capped 3, stalled 4, timed-out-budget 5, aborted 130.

Example:
  loopbox run tasks/fix-login.md --max-iterations 8
`,
    )
    .action(async (tasks: string[], opts: { repo: string; resume?: string; maxIterations?: number; concurrency?: number; allowDirty?: boolean; json?: boolean; push?: string | true; swarm?: boolean; render?: string }) => {
      if (opts.resume && (opts.swarm || opts.render !== undefined)) {
        throw new ConfigError('--resume continues a local run; it cannot be combined with --swarm or --render.', [], { hint: 'Resume a swarm run\'s loop locally with `loopbox run --resume RUN`, or start it again with --swarm.' });
      }
      const loaded = opts.resume ? undefined : await loadConfig({ file: configFile(), dir: opts.repo });
      const config = loaded ? loaded.config : await resumeConfig(opts.resume ?? '', configFile(), opts.repo);
      if (opts.maxIterations) config.loop.maxIterations = opts.maxIterations;
      if (opts.push) config.loop.push = withPushRemote(config.loop.push, opts.push);
      if (loaded && (opts.swarm || opts.render !== undefined || config.cluster.mode === 'swarm')) {
        return runSwarmCommand(ctx, result, { tasks, repo: opts.repo, configFile: loaded.file, config, render: opts.render, allowDirty: opts.allowDirty, json: opts.json });
      }
      await reapDeadRuns(ctx.docker);
      const onEvent = (e: LoopEvent): void => (opts.json ? out(JSON.stringify(e)) : printLoopEvent(e));
      let summaries: LoopSummary[];
      if (opts.resume) {
        await checkDeliveryConfig(config);
        const summary = await runLoop(ctx.docker, { repo: opts.repo, config, resume: opts.resume, signal: ctx.signal, onEvent });
        await deliverRun(summary, { repo: opts.repo, config, version: packageVersion(), signal: ctx.signal, onNotice: (message) => onEvent({ type: 'notice', runId: summary.runId, task: summary.task, message }) });
        summaries = [summary];
      } else {
        // Like `git -C`: a relative task path names a file in --repo, not in the current directory.
        const files = tasks.length ? tasks.map((t) => path.resolve(opts.repo, t)) : await resolveTaskFiles(opts.repo, config.tasks);
        if (!files.length) throw new ConfigError('No task files found.', [], { hint: `Pass one (loopbox run tasks/x.md) or add files matching ${config.tasks.join(', ')}; \`loopbox init\` writes an example.` });
        // Check every task file before any loop starts: bad input loses nothing.
        await Promise.all(files.map((f, i) => loadTask(f, tasks.length ? { given: tasks[i] ?? f, repo: opts.repo } : undefined)));
        await checkRepoAndModel(ctx.docker, path.resolve(opts.repo), config, opts.allowDirty ?? false);
        const runner = await LoopRunner.create(ctx.docker, { repo: opts.repo, config, concurrency: opts.concurrency, allowDirty: opts.allowDirty ?? false, signal: ctx.signal, onEvent });
        if (files.length > 1 && !opts.json) err(`loopbox: ${files.length} tasks, ${runner.concurrency} at once, ${runner.slots} model slot(s)`);
        summaries = await runner.runAll(files);
      }
      for (const s of summaries) if (s.endState === 'error' && !opts.json) err(`[${s.task}] error: ${s.reason}`);
      if (!opts.json) err(`\n${summaryTable(summaries)}`);
      for (const r of await writeReports(summaries.filter((x) => x.iterations > 0).map((x) => x.runId), { version: packageVersion() })) err(r.file ? `report: ${r.file}` : `report of ${r.runId}: not written (${r.error})`);
      result.exitCode = summaries.reduce((code, s) => Math.max(code, s.exitCode), 0);
    });
}

/**
 * A resumed run goes on with the config it was started with (issue 20), recorded in its run
 * directory, wherever `--resume` is typed; the current directory's loopbox.yaml (or --config)
 * only for a run of an older loopbox that recorded none.
 */
async function resumeConfig(runId: string, file: string | undefined, repo: string): Promise<Config> {
  const recorded = await recordedConfig(runDir(runId));
  if (recorded) {
    if (file !== undefined) err(`loopbox: --resume ${runId} uses the config recorded with the run (${recorded.file}), not ${file}`);
    return recorded.config;
  }
  const loaded = await loadConfig({ file, dir: repo });
  err(`loopbox: run ${runId} has no recorded config; using ${loaded.file ?? 'the defaults'}`);
  return loaded.config;
}

async function reapDeadRuns(docker: CliContext['docker']): Promise<void> {
  const n = await reapDeadRunContainers(docker);
  if (n) err(`loopbox: removed ${n} container(s) left by runs that are no longer alive`);
}

export function registerStatusAndStop(program: Command, ctx: CliContext, result: ProgramResult): void {
  program
    .command('status')
    .description('running and queued loops (task, iteration, elapsed, last verify) and the model\'s busy/total slots')
    .option('--json', 'print JSON')
    .addHelpText('after', '\nExample:\n  watch -n 5 loopbox status\n')
    .action(async (opts: { json?: boolean }) => {
      await reapDeadRuns(ctx.docker);
      const [loops, model] = await Promise.all([loopStatus(), modelStatus(ctx.docker).catch(() => ({ running: false as const }))]);
      if (opts.json) return out(JSON.stringify({ loops, model }, null, 2));
      const slots = model.running && 'slots' in model && model.slots ? `${model.slots.busy}/${model.slots.total} slots busy` : 'slots unknown';
      out(`model server: ${model.running ? `running, ${slots}` : 'not running'}`);
      for (const line of await swarmStatusLines(ctx)) out(line);
      if (!loops.length) return out('no loops running or queued');
      out(
        formatTable(
          ['RUN', 'TASK', 'STATE', 'ITERATION', 'ELAPSED', 'LAST VERIFY', 'TOKENS', 'TRIGGER'],
          loops.map((l) => [l.runId, l.task, l.state, l.state === 'queued' ? '-' : String(l.iteration), `${Math.round(l.elapsedMs / 1000)} s`, l.lastVerify, String(l.tokens), l.trigger]),
        ),
      );
    });

  program
    .command('stop')
    .description('stop loops gracefully, like Ctrl+C (agent stopped, work in progress committed); --force also removes their containers at once')
    .argument('[run]', 'run id')
    .option('--task <name>', 'every running loop on this task')
    .option('--all', 'every running loop')
    .option('--force', 'remove the loops\' containers now instead of waiting for the iteration to wind down')
    .addHelpText('after', `
A cron job can also stop every loop by touching the kill-switch file
$LOOPBOX_STATE_DIR/STOP (default ~/.local/state/loopbox/STOP); remove it to allow loops again.

Example:
  loopbox stop --task fix-login
`)
    .action(async (run: string | undefined, opts: { task?: string; all?: boolean; force?: boolean }) => {
      if (!run && !opts.task && !opts.all) throw new ConfigError('Say which loops to stop: a run id, --task NAME, or --all.');
      const stopped = await stopLoops(ctx.docker, { runId: run, task: opts.task, all: opts.all }, opts.force ?? false);
      for (const id of stopped) out(`${opts.force ? 'force-stopped' : 'asked to stop'}: ${id}`);
      result.exitCode = 0;
    });
}
