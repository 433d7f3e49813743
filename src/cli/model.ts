// `loopbox model up|pull|down|status|logs`: the managed llama-server on the internal model network.
// Wiring only; the server is in src/model.
import type { Command } from 'commander';
import { type Config, ConfigError, ensureFixtureModel, loadConfig, MODEL_CONTAINER, modelDown, modelStatus, modelUp, pullModel, swarmModelUp } from '../index.js';
import { type CliContext, err, out } from './context.js';
import { example } from './options.js';

export interface ModelSource {
  gguf?: string;
  fixture?: boolean;
}

/** The config and the GGUF a `model up` names (--fixture, --gguf, else model.gguf). */
async function modelSource(ctx: CliContext, opts: ModelSource, configFile: () => string | undefined): Promise<{ config: Config; gguf: string }> {
  const { config } = await loadConfig({ file: configFile() });
  const gguf = opts.fixture ? await ensureFixtureModel(ctx.docker) : (opts.gguf ?? config.model.gguf);
  if (!gguf) throw new ConfigError('No model file given.', [], { hint: 'Pass --gguf FILE, set model.gguf in loopbox.yaml, or use --fixture.' });
  return { config, gguf };
}

/** `model up --swarm` and `swarm model up`: the model keepers on every labelled node. */
export async function modelUpOnSwarm(ctx: CliContext, opts: ModelSource, configFile: () => string | undefined): Promise<void> {
  const { config, gguf } = await modelSource(ctx, opts, configFile);
  const up = await swarmModelUp(ctx.docker, { gguf, ctxSize: config.model.ctxSize, parallel: config.model.parallel, gpuLayers: config.model.gpuLayers, gpus: config.model.gpus, image: config.model.image, startTimeoutMs: config.model.startTimeout, runnerImage: config.cluster.image });
  out(`model keepers on ${up.nodes.join(', ')} (service ${up.serviceId.slice(0, 12)})`);
}

export function registerModel(program: Command, ctx: CliContext, configFile: () => string | undefined): void {
  const model = program.command('model').description('the managed llama-server on the internal model network');
  model
    .command('up')
    .description('start llama-server (GPU image with the NVIDIA runtime, else the CPU image) and wait until healthy')
    .option('--gguf <file>', 'GGUF model file (default: model.gguf from the config)')
    .option('--fixture', 'use the generated tiny fixture model (tests, demo)')
    .option('--swarm', 'on every Swarm node labelled loopbox.model=ready instead (as `loopbox swarm model up`; docs/scaling.md)')
    .addHelpText('after', example('loopbox model up --gguf ~/models/qwen3-coder-30b-q4_k_m.gguf'))
    .action(async (opts: ModelSource & { swarm?: boolean }) => {
      if (opts.swarm) return modelUpOnSwarm(ctx, opts, configFile);
      const { config, gguf } = await modelSource(ctx, opts, configFile);
      const up = await modelUp(ctx.docker, {
        gguf,
        ctxSize: config.model.ctxSize,
        parallel: config.model.parallel,
        gpuLayers: config.model.gpuLayers,
        gpus: config.model.gpus,
        image: config.model.image,
        startTimeoutMs: config.model.startTimeout,
      });
      out(`${up.reused ? 'already running' : 'started'}: ${MODEL_CONTAINER} at ${up.ip}:${up.port} (sandboxes reach it as http://model:8080/v1)`);
    });
  model
    .command('pull')
    .description('download a GGUF into the model directory (the one step that fetches a model; loops never need egress)')
    .argument('<source>', 'a URL, or hf:<owner>/<repo>/<file>.gguf')
    .option('--dir <dir>', 'where to put it (default: <state dir>/models)')
    .option('--sha256 <hex>', 'expected SHA-256 of the file')
    .option('--force', 'download again if the file exists')
    .addHelpText('after', example('loopbox model pull hf:Qwen/Qwen3-Coder-30B-A3B-Instruct-GGUF/Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf'))
    .action(async (source: string, opts: { dir?: string; sha256?: string; force?: boolean }) => {
      let last = 0;
      const res = await pullModel({
        source,
        dir: opts.dir,
        sha256: opts.sha256,
        force: opts.force ?? false,
        signal: ctx.signal,
        onProgress: (done, total) => {
          if (Date.now() - last < 1000 && done !== total) return;
          last = Date.now();
          const mib = (n: number): string => (n / 1024 ** 2).toFixed(1);
          err(`loopbox model pull: ${mib(done)} MiB${total ? ` of ${mib(total)} MiB (${Math.floor((100 * done) / total)}%)` : ''}`);
        },
      });
      out(`${res.file} (${res.bytes} bytes, sha256 ${res.sha256})`);
      err(`use it with: loopbox model up --gguf ${res.file}   (or model.gguf in loopbox.yaml)`);
    });
  model
    .command('down')
    .description('stop and remove the model server')
    .action(async () => {
      out((await modelDown(ctx.docker)) ? 'removed the model server' : 'no model server was running');
    });
  model
    .command('status')
    .description('model name, busy/total slots and throughput counters')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const s = await modelStatus(ctx.docker);
      if (opts.json) return out(JSON.stringify(s, null, 2));
      if (!s.running) return out('model server: not running (loopbox model up)');
      out(`model server: running at ${s.ip}:8080, model ${s.model ?? '?'}, slots ${s.slots ? `${s.slots.busy}/${s.slots.total} busy` : '?'}`);
      const m = s.metrics ?? {};
      const keys = ['llamacpp:prompt_tokens_total', 'llamacpp:tokens_predicted_total', 'llamacpp:prompt_tokens_seconds', 'llamacpp:predicted_tokens_seconds'];
      for (const k of keys) if (m[k] !== undefined) out(`  ${k.replace('llamacpp:', '')}: ${m[k]}`);
    });
  model
    .command('logs')
    .description('the model server\'s last log lines')
    .option('-n, --lines <n>', 'number of lines', (v) => Number(v), 50)
    .action(async (opts: { lines: number }) => {
      out(await ctx.docker.logs(MODEL_CONTAINER, opts.lines));
    });
}
