// `loopbox sandbox run`: one command in a fresh sandbox (sentry + agent), exactly as an agent
// iteration runs. Wiring only; the sandbox is in src/sandbox.
import path from 'node:path';
import { type Command, Option } from 'commander';
import { ConfigError, isSafeName, loadConfig, LoopboxError, newRunId, runStandaloneSandbox } from '../index.js';
import { type CliContext, err } from './context.js';
import { type ProgramResult, collect, duration, example, nonNegativeInt } from './options.js';

export function registerSandbox(program: Command, ctx: CliContext, result: ProgramResult, configFile: () => string | undefined): void {
  const sandbox = program.command('sandbox').description('run commands in a sandbox exactly as an agent iteration runs');
  sandbox
    .command('run')
    .description('run one command in a fresh sandbox (sentry + agent), stream its output, exit with its exit code')
    .argument('<cmd...>', 'command and arguments (put them after --)')
    .option('--run-id <id>', 'run id (default: a new one)')
    .option('--image <image>', 'agent image (default: loopbox/agent:<version>)')
    .option('--attach-network <net>', 'also attach the sentry to this Docker network (tests, diagnosis); repeatable', collect, [])
    .option('--mount <host:container[:ro]>', 'bind-mount a host path; repeatable', collect, [])
    .option('--workdir <dir>', 'working directory inside the sandbox')
    .option('--timeout <duration>', 'kill the command after this long', duration)
    .option('--task <name>', 'task name for labels and the audit log')
    .option('--iteration <n>', 'iteration number for labels and the audit log', nonNegativeInt)
    .option('-e, --env <KEY=VALUE>', 'environment variable for the command; repeatable', collect, [])
    .option('--entrypoint <path>', 'override the image entrypoint (diagnosis with other images)')
    .addOption(new Option('--no-firewall', 'TEST ONLY: start the sentry without firewall rules').hideHelp())
    .addHelpText('after', example('loopbox sandbox run --mount "$PWD:/workspace" --workdir /workspace -- bash -lc "npm test"'))
    .action(async (cmd: string[], opts: { runId?: string; image?: string; attachNetwork: string[]; mount: string[]; workdir?: string; timeout?: number; task?: string; iteration?: number; env: string[]; entrypoint?: string; firewall: boolean }) => {
      const runId = opts.runId ?? newRunId();
      if (!isSafeName(runId)) throw new ConfigError(`--run-id ${JSON.stringify(runId)} must be lowercase letters, digits, '.', '_' or '-'.`);
      if (opts.task !== undefined && !isSafeName(opts.task)) throw new ConfigError(`--task ${JSON.stringify(opts.task)} must be lowercase letters, digits, '.', '_' or '-'.`);
      const { config } = await loadConfig({ file: configFile() });
      const binds = opts.mount.map(parseMount);
      const env = Object.fromEntries(opts.env.map(parseEnv));
      const res = await runStandaloneSandbox(ctx.docker, {
        runId,
        task: opts.task,
        iteration: opts.iteration,
        cmd,
        entrypoint: opts.entrypoint === undefined ? undefined : [opts.entrypoint],
        env,
        image: opts.image ?? config.sandbox.image,
        binds,
        workingDir: opts.workdir,
        limits: { memoryBytes: config.sandbox.memory, cpus: config.sandbox.cpus, pids: config.sandbox.pids },
        allow: config.sandbox.allow,
        attachNetworks: opts.attachNetwork,
        noFirewall: !opts.firewall,
        gateway: { maxBodyBytes: config.model.maxRequestBody, maxTokens: config.model.maxTokens },
        timeoutMs: opts.timeout,
        signal: ctx.signal,
        stdout: process.stdout,
        stderr: process.stderr,
        onStart: () => err(`loopbox: run ${runId}`),
      });
      const blocked = res.records.reduce((n, r) => n + r.count, 0);
      err(
        `loopbox: run ${runId} exit ${res.exitCode}${res.timedOut ? ' (timed out)' : ''}; ${blocked} blocked attempt(s) in the audit log` +
          `${res.traffic.lostRecords ? `, ${res.traffic.lostRecords} LOST` : ''}${res.modelReachable ? '' : '; no model server running'}` +
          `${res.model.requests ? `; ${res.model.requests} model request(s), ${res.model.tokens} tokens (${res.model.cachedTokens} cached prompt tokens apart)` : ''}`,
      );
      if (res.aborted) throw new LoopboxError('Stopped by signal');
      result.exitCode = res.timedOut ? 124 : res.exitCode;
    });
}

function parseMount(spec: string): { host: string; container: string; readOnly: boolean } {
  const parts = spec.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1]?.startsWith('/') || (parts[2] && parts[2] !== 'ro' && parts[2] !== 'rw')) {
    throw new ConfigError(`--mount ${JSON.stringify(spec)}: expected HOST:CONTAINER[:ro], with an absolute container path.`);
  }
  return { host: path.resolve(parts[0]), container: parts[1], readOnly: parts[2] === 'ro' };
}

function parseEnv(spec: string): [string, string] {
  const eq = spec.indexOf('=');
  if (eq <= 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(spec.slice(0, eq))) {
    throw new ConfigError(`--env ${JSON.stringify(spec)}: expected KEY=VALUE with a shell-style KEY.`);
  }
  return [spec.slice(0, eq), spec.slice(eq + 1)];
}
