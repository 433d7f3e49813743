// `loopbox run --swarm` / `--render k8s` and the `loopbox swarm …` group: loops as Docker Swarm
// jobs (docs/scaling.md). Wiring only; the work is in src/cluster.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { type Config, ConfigError, formatTable, imageRef, keepModel, loadTask, type LoopEvent, type LoopSummary, readJobEnv, renderK8s, resolveTaskFiles, runJob, runOnSwarm, stopSwarmLoops, swarmLoops, swarmModelDown } from '../index.js';
import { type CliContext, err, out } from './context.js';
import type { ProgramResult } from './options.js';
import { type ModelSource, modelUpOnSwarm } from './model.js';
import { printLoopEvent, summaryTable } from './print.js';

export interface SwarmRunArgs {
  tasks: string[];
  repo: string;
  configFile: string | undefined;
  config: Config;
  render?: string | undefined;
  allowDirty?: boolean | undefined;
  json?: boolean | undefined;
}

/** `loopbox run --swarm` (or cluster.mode: swarm) and `loopbox run --render k8s`. */
export async function runSwarmCommand(ctx: CliContext, result: ProgramResult, args: SwarmRunArgs): Promise<void> {
  const files = args.tasks.length ? args.tasks.map((t) => path.resolve(args.repo, t)) : await resolveTaskFiles(args.repo, args.config.tasks);
  if (!files.length) throw new ConfigError('No task files found.', [], { hint: `Pass one (loopbox run --swarm tasks/x.md) or add files matching ${args.config.tasks.join(', ')}.` });
  await Promise.all(files.map((f, i) => loadTask(f, args.tasks.length ? { given: args.tasks[i] ?? f, repo: args.repo } : undefined)));
  const configYaml = args.configFile ? await readFile(args.configFile, 'utf8') : await readFile(path.join(args.repo, 'loopbox.yaml'), 'utf8').catch(() => '');
  const common = { repo: path.resolve(args.repo), files, config: args.config, configYaml, allowDirty: args.allowDirty ?? false, signal: ctx.signal, onLine: (l: string) => err(l) };
  if (args.render !== undefined) {
    if (args.render !== 'k8s') throw new ConfigError(`--render ${args.render}: only k8s is known.`, [], { hint: 'loopbox run --render k8s tasks/x.md' });
    const docs = await renderK8s({ ...common, imageRef: args.config.cluster.image ?? imageRef('runner'), gitUrl: args.config.cluster.gitUrl ?? 'git://HOST/REPO.git' });
    out(docs.map((d) => stringify(d)).join('---\n'));
    return;
  }
  const summaries: LoopSummary[] = await runOnSwarm(ctx.docker, common);
  if (args.json) for (const s of summaries) out(JSON.stringify({ type: 'loop-end', summary: s } satisfies LoopEvent));
  for (const s of summaries) if (s.endState === 'error') err(`[${s.task}] error: ${s.reason}`);
  err(`\n${summaryTable(summaries)}`);
  result.exitCode = summaries.reduce((code, s) => Math.max(code, s.exitCode), 0);
}

export function registerSwarm(program: Command, ctx: CliContext, result: ProgramResult, configFile: () => string | undefined): void {
  const swarm = program.command('swarm').description('loops as Docker Swarm jobs: their status, stop, the model on every node (docs/scaling.md)');
  swarm
    .command('status')
    .description('loops running as swarm jobs: run, task, node, state')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const rows = await swarmLoops(ctx.docker);
      if (opts.json) return out(JSON.stringify(rows, null, 2));
      if (!rows.length) return out('no loops on the swarm');
      out(formatTable(['RUN', 'TASK', 'NODE', 'STATE', 'SERVICE', 'ERROR'], rows.map((r) => [r.runId, r.task, r.node, r.state, r.service, r.error || '-'])));
    });
  swarm
    .command('stop')
    .description('stop loops running as swarm jobs: each runner winds down like Ctrl+C and pushes what it has (--force: remove the job at once)')
    .argument('[run]', 'run id')
    .option('--task <name>', 'every swarm loop on this task')
    .option('--all', 'every swarm loop')
    .option('--force', 'remove the jobs and their containers now, without waiting for the runner')
    .action(async (run: string | undefined, opts: { task?: string; all?: boolean; force?: boolean }) => {
      if (!run && !opts.task && !opts.all) throw new ConfigError('Say which swarm loops to stop: a run id, --task NAME, or --all.');
      const stopped = await stopSwarmLoops(ctx.docker, { runId: run, task: opts.task, all: opts.all }, opts.force ?? false);
      for (const s of stopped) out(s.how === 'asked' ? `asked to stop: ${s.runId}` : `removed the swarm job of ${s.runId}`);
      if (!stopped.length) out('no such swarm loop');
    });
  const model = swarm.command('model').description('llama-server on every labelled node (a global service of keepers)');
  model
    .command('up')
    .description('run the model server on every node labelled loopbox.model=ready (the GGUF must be at the same path on each)')
    .option('--gguf <file>', 'GGUF model file (default: model.gguf from the config)')
    .option('--fixture', 'use the generated tiny fixture model (tests, demo)')
    .action((opts: ModelSource) => modelUpOnSwarm(ctx, opts, configFile));
  model
    .command('down')
    .description('remove the model keepers; each stops the model server it started')
    .action(async () => {
      out((await swarmModelDown(ctx.docker)) ? 'removed the model keepers' : 'no model keepers were running');
    });
  // Inside the runner image (its default command); not for people.
  swarm
    .command('job', { hidden: true })
    .description('run the one loop of a swarm job (inside loopbox/runner)')
    .action(async () => {
      const spec = readJobEnv();
      const res = await runJob(ctx.docker, spec, { signal: ctx.signal, onEvent: (e) => printLoopEvent(e) });
      if (res.error) err(`[${spec.task}] error: ${res.error}`);
      if (res.summary) err(`\n${summaryTable([res.summary])}`);
      err(`pushed: ${res.pushed.join(', ')}`);
      result.exitCode = res.summary?.exitCode ?? 1;
    });
  swarm
    .command('model-keeper', { hidden: true })
    .description('keep the node\'s model server running (inside loopbox/runner, a global service)')
    .action(async () => {
      const raw = process.env.LOOPBOX_KEEPER;
      if (!raw) throw new ConfigError('LOOPBOX_KEEPER is not set: the keeper is started by `loopbox swarm model up`.');
      await keepModel(ctx.docker, JSON.parse(Buffer.from(raw, 'base64').toString('utf8')) as Parameters<typeof keepModel>[1], ctx.signal, (l) => err(l));
    });
}


/** `loopbox status`: the swarm's loops under the local ones' header (nothing when not a swarm manager). */
export async function swarmStatusLines(ctx: CliContext): Promise<string[]> {
  const rows = await swarmLoops(ctx.docker).catch(() => []);
  if (!rows.length) return [];
  return [`swarm loops: ${rows.length}`, formatTable(['RUN', 'TASK', 'NODE', 'STATE'], rows.map((r) => [r.runId, r.task, r.node, r.state]))];
}
