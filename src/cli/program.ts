// commander wiring only: parse options, call the library, print. No process.exit here.
import path from 'node:path';
import { Command, Option } from 'commander';
import { buildImages, ConfigError, createRun, doctor, ensureFixtureModel, finishRun, formatTable, gc, IMAGE_NAMES, type ImageName, imageRef, initProject, isSafeName, loadConfig, LoopboxError, MODEL_CONTAINER, modelDown, modelStatus, modelUp, newRunId, packageVersion, pruneDeadWorktrees, pullModel, runDemo, runDir, runSandbox, sandboxAuditDir, type Toolchain, toolchainImage, TOOLCHAINS, VERIFY_PROFILES, verifyImageFor } from '../index.js';
import { registerAuditChain } from './audit.js';
import { type CliContext, err, out } from './context.js';
import { type ProgramResult, collect, duration, example, nonNegativeInt } from './options.js';
import { printLoopEvent, summaryTable } from './print.js';
import { registerRun, registerStatusAndStop } from './run.js';
import { registerTriggers } from './triggers.js';
import { registerSwarm } from './swarm.js';
import { registerAudit } from './audit-query.js';
import { registerReport, reportPaths } from './report.js';
import { registerDigest } from './digest.js';

export function buildProgram(ctx: CliContext, result: ProgramResult): Command {
  const program = new Command('loopbox')
    .description('Run coding-agent loops in hardened Docker sandboxes against a local model, with verified commits and an egress audit log.')
    .version(packageVersion())
    .option('-c, --config <file>', 'config file (default: ./loopbox.yaml)')
    .showHelpAfterError()
    .addHelpText('after', example('loopbox doctor'));

  const configFile = (): string | undefined => program.opts<{ config?: string }>().config;

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

  const images = program.command('images').description('build and list the project images');
  images
    .command('build')
    .description('build every project image (sentry, agent, llama-cpu), skipping those whose inputs are unchanged')
    .option('--ca-cert <file>', 'extra CA certificate (PEM) for build steps that fetch packages; repeatable; added to images.caCerts and NODE_EXTRA_CA_CERTS; never left in the image', collect, [])
    .option('--offline', 'never try a registry: make missing base images with debootstrap')
    .option('--mirror <url>', 'Debian mirror for debootstrap (default: this machine\'s apt sources)')
    .addOption(new Option('--only <name>', 'build only this image; repeatable').choices([...IMAGE_NAMES]).argParser(collect))
    .addOption(
      new Option('--toolchain <name>', 'also build loopbox/verify-<name>: the agent image plus that toolchain from Debian packages, for verify.image; repeatable')
        .choices([...TOOLCHAINS])
        .argParser(collect),
    )
    .option('--force', 'rebuild even when inputs are unchanged')
    .addHelpText('after', `${example('loopbox images build --ca-cert /etc/ssl/certs/corp-proxy.pem --offline')}  loopbox images build --toolchain python   # then verify.image: ${imageRef('verify-python')}\n`)
    .action(async (opts: { caCert: string[]; offline?: boolean; mirror?: string; only?: ImageName[]; toolchain?: Toolchain[]; force?: boolean }) => {
      const { config } = await loadConfig({ file: configFile() });
      const built = await buildImages(ctx.docker, {
        caCerts: [...config.images.caCerts, ...opts.caCert],
        offline: opts.offline ?? false,
        mirror: opts.mirror ?? config.images.mirror,
        only: opts.only,
        toolchains: opts.toolchain,
        force: opts.force ?? false,
        onLine: (line) => err(line),
      });
      out(formatTable(['IMAGE', 'STATUS', 'SECONDS'], built.map((b) => [b.ref, b.status, b.seconds.toFixed(1)])));
    });

  images
    .command('list')
    .description('the project images: present or missing, and their inputs hash')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const rows = [];
      for (const name of [...IMAGE_NAMES, ...TOOLCHAINS.map(toolchainImage)]) {
        const ref = imageRef(name);
        const found = await ctx.docker.findImage(ref);
        // Toolchain images are optional: listed only once built.
        if (!found && !(IMAGE_NAMES as readonly string[]).includes(name)) continue;
        rows.push({ name, ref, present: Boolean(found), inputsHash: found?.labels['loopbox.inputs-hash']?.slice(0, 12) ?? null });
      }
      if (opts.json) return out(JSON.stringify(rows, null, 2));
      out(formatTable(['IMAGE', 'PRESENT', 'INPUTS'], rows.map((r) => [r.ref, r.present ? 'yes' : 'no (loopbox images build)', r.inputsHash ?? '-'])));
    });

  program
    .command('gc')
    .description('remove containers, networks and volumes left by runs that are no longer alive (only loopbox-labelled ones)')
    .option('--dry-run', 'list what would be removed')
    .option('--all', 'remove everything loopbox labelled, live runs and the model server included')
    .addHelpText('after', example('loopbox gc --dry-run'))
    .action(async (opts: { dryRun?: boolean; all?: boolean }) => {
      const res = await gc(ctx.docker, { dryRun: opts.dryRun ?? false, all: opts.all ?? false });
      const verb = opts.dryRun ? 'would remove' : 'removed';
      for (const r of res.removed) out(`${verb} ${r.kind} ${r.name} (run ${r.labels['loopbox.run-id'] ?? '?'})`);
      for (const f of res.failed) err(`could not remove ${f.resource.kind} ${f.resource.name}: ${f.error}`);
      // Task worktrees whose repository is gone go too; git forgets registrations of gone folders.
      const wts = await pruneDeadWorktrees(undefined, opts.dryRun ?? false);
      for (const dir of wts.removed) out(`${verb} worktree ${dir} (its repository is gone)`);
      err(`${verb} ${res.removed.length + wts.removed.length}, kept ${res.kept.length}${res.failed.length ? `, failed ${res.failed.length}` : ''}`);
      if (res.failed.length) result.exitCode = 1;
    });

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
      const record = await createRun({ runId, kind: 'sandbox', task: opts.task });
      err(`loopbox: run ${runId}`);
      try {
        const res = await runSandbox(ctx.docker, {
          runId,
          task: opts.task,
          iteration: opts.iteration,
          cmd,
          entrypoint: opts.entrypoint === undefined ? undefined : [opts.entrypoint],
          env,
          image: opts.image ?? config.sandbox.image,
          auditDir: sandboxAuditDir(runDir(runId), opts.iteration),
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
        });
        const blocked = res.records.reduce((n, r) => n + r.count, 0);
        err(
          `loopbox: run ${runId} exit ${res.exitCode}${res.timedOut ? ' (timed out)' : ''}; ${blocked} blocked attempt(s) in the audit log` +
            `${res.traffic.lostRecords ? `, ${res.traffic.lostRecords} LOST` : ''}${res.modelReachable ? '' : '; no model server running'}` +
            `${res.model.requests ? `; ${res.model.requests} model request(s), ${res.model.tokens} tokens (${res.model.cachedTokens} cached prompt tokens apart)` : ''}`,
        );
        if (res.aborted) throw new LoopboxError('Stopped by signal');
        result.exitCode = res.timedOut ? 124 : res.exitCode;
      } finally {
        await finishRun(record);
      }
    });

  registerAuditChain(registerAudit(program, ctx, result), result);
  registerReport(program);
  registerDigest(program);
  registerRun(program, ctx, result, configFile);
  registerStatusAndStop(program, ctx, result);
  registerTriggers(program, ctx, configFile);
  registerSwarm(program, ctx, result, configFile);

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
      for (const r of await reportPaths(res.summaries.map((x) => x.runId))) err(r.file ? `report: ${r.file}` : `report of ${r.runId}: not written (${r.error})`);
      // With a reviewer, `done` depends on its verdict (the fixture model's noise never approves).
      const firstOk = first?.endState === 'done' || (opts.reviewEndpoint !== undefined && first !== undefined && first.endState !== 'error');
      result.exitCode = firstOk && second && second.endState !== 'error' ? 0 : 1;
    });

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

  const model = program.command('model').description('the managed llama-server on the internal model network');
  model
    .command('up')
    .description('start llama-server (GPU image with the NVIDIA runtime, else the CPU image) and wait until healthy')
    .option('--gguf <file>', 'GGUF model file (default: model.gguf from the config)')
    .option('--fixture', 'use the generated tiny fixture model (tests, demo)')
    .addHelpText('after', example('loopbox model up --gguf ~/models/qwen3-coder-30b-q4_k_m.gguf'))
    .action(async (opts: { gguf?: string; fixture?: boolean }) => {
      const { config } = await loadConfig({ file: configFile() });
      const gguf = opts.fixture ? await ensureFixtureModel(ctx.docker) : (opts.gguf ?? config.model.gguf);
      if (!gguf) throw new ConfigError('No model file given.', [], { hint: 'Pass --gguf FILE, set model.gguf in loopbox.yaml, or use --fixture.' });
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

  return program;
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
