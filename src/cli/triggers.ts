// `loopbox schedule` and `loopbox serve`: long-running processes that start loops on cron
// ticks or webhooks, through the same slot-bounded runner as `loopbox run`.
import path from 'node:path';
import type { Command } from 'commander';
import {
  checkRepoAndModel,
  type Config,
  ConfigError,
  createLogger,
  loadConfig,
  type LoopEvent,
  LoopMetrics,
  LoopRunner,
  metricsTokenFromEnv,
  modelSlotUse,
  resolveTaskFiles,
  secretFromEnv,
  startScheduler,
  startServer,
  stateDir,
  taskNameOf,
  type TriggerEvent,
} from '../index.js';
import { type CliContext, err } from './context.js';
import { port, positiveInt } from './options.js';
import { printLoopEvent } from './print.js';

async function triggerRunner(ctx: CliContext, repo: string, config: Config, concurrency: number | undefined, observe?: (event: LoopEvent) => void): Promise<LoopRunner> {
  await checkRepoAndModel(ctx.docker, path.resolve(repo), config, true);
  const onEvent = (event: LoopEvent): void => {
    observe?.(event);
    printLoopEvent(event);
  };
  return LoopRunner.create(ctx.docker, { repo, config, concurrency, allowDirty: true, signal: ctx.signal, onEvent, maxQueued: config.serve.queueSize });
}

/** Trigger events go to stderr as JSON lines and to the trigger log in the state dir. */
function triggerLog(file: string): (event: TriggerEvent) => void {
  const logger = createLogger({ file, level: 'info' });
  return (event) => {
    logger.info(event);
    err(JSON.stringify({ time: new Date().toISOString(), ...event }));
  };
}

function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
}

export function registerTriggers(program: Command, ctx: CliContext, configFile: () => string | undefined): void {
  program
    .command('schedule')
    .description('start loops on the cron entries of the config (`schedule:`); a tick whose task is still running is skipped and logged')
    .option('--repo <dir>', 'the git repository to work on', '.')
    .option('--concurrency <n>', 'loops at once (default: the model server\'s slots)', positiveInt)
    .addHelpText('after', '\nConfig:\n  schedule:\n    - cron: "0 2 * * *"     # every night at 2\n      task: tasks/nightly-deps.md\n\nExample:\n  loopbox schedule --repo ~/src/app\n')
    .action(async (opts: { repo: string; concurrency?: number }) => {
      const { config } = await loadConfig({ file: configFile(), dir: opts.repo });
      if (!config.schedule.length) throw new ConfigError('The config has no `schedule:` entries.', [], { hint: 'Add e.g. schedule: [{ cron: "0 2 * * *", task: tasks/x.md }] (docs/triggers.md).' });
      const runner = await triggerRunner(ctx, opts.repo, config, opts.concurrency);
      const scheduler = startScheduler({
        entries: config.schedule.map((e) => ({ ...e, task: path.resolve(opts.repo, e.task) })),
        starter: runner,
        log: triggerLog(path.join(stateDir(), 'schedule.log')),
      });
      for (const next of scheduler.nextRuns()) err(`loopbox schedule: ${next.task} next at ${next.next.toISOString()} (${next.cron})`);
      await untilAborted(ctx.signal);
      await scheduler.stop();
      await runner.idle();
    });

  program
    .command('serve')
    .description('HTTP endpoint that starts loops on a GitHub webhook for failed CI or a signed JSON trigger (loopback by default)')
    .option('--repo <dir>', 'the git repository to work on', '.')
    .option('--host <host>', 'bind address (default: serve.host, 127.0.0.1)')
    .option('--port <port>', 'port (default: serve.port, 8787; 0 picks a free one)', port)
    .option('--concurrency <n>', 'loops at once (default: the model server\'s slots)', positiveInt)
    .addHelpText(
      'after',
      '\nThe HMAC secret comes from the environment variable named by serve.secretEnv\n(default LOOPBOX_WEBHOOK_SECRET). Endpoints: POST /hooks/github, POST /trigger, GET /healthz,\nGET /metrics (Prometheus; docs/metrics.md).\n\nExample:\n  LOOPBOX_WEBHOOK_SECRET=$(cat ~/.loopbox-secret) loopbox serve --repo ~/src/app\n',
    )
    .action(async (opts: { repo: string; host?: string; port?: number; concurrency?: number }) => {
      const { config } = await loadConfig({ file: configFile(), dir: opts.repo });
      const serveConfig = { ...config.serve, host: opts.host ?? config.serve.host, port: opts.port ?? config.serve.port };
      if (serveConfig.github) serveConfig.github = { ...serveConfig.github, task: path.resolve(opts.repo, serveConfig.github.task) };
      const secret = secretFromEnv(serveConfig);
      const metricsToken = metricsTokenFromEnv(serveConfig);
      const allowed = new Map((await resolveTaskFiles(opts.repo, serveConfig.tasks)).map((f) => [taskNameOf(f), f]));
      // The metrics observe the runner's events, so they exist first and read its counts later.
      const made: { runner?: LoopRunner } = {};
      const metrics = serveConfig.metrics.enabled
        ? new LoopMetrics({ loops: () => made.runner?.counts() ?? { running: 0, queued: 0 }, modelSlots: () => modelSlotUse(ctx.docker, config.model.endpoint) })
        : undefined;
      const runner = (made.runner = await triggerRunner(ctx, opts.repo, config, opts.concurrency, metrics ? (event) => metrics.observe(event) : undefined));
      const server = await startServer({
        config: serveConfig,
        secret,
        metrics: metrics ? { endpoint: metrics, token: metricsToken } : undefined,
        starter: runner,
        resolveTask: (name) => allowed.get(name),
        log: triggerLog(path.join(stateDir(), 'serve.log')),
      });
      err(`loopbox serve: listening on ${server.url} (tasks: ${[...allowed.keys()].join(', ') || 'none'}${serveConfig.github ? `; GitHub CI failures run ${path.basename(serveConfig.github.task)}` : ''})`);
      await untilAborted(ctx.signal);
      await server.close();
      await runner.idle();
    });
}
