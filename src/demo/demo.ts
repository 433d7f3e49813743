// `loopbox demo`: the whole product on a fresh machine with no GPU and no model. Builds the
// images, makes the fixture model, starts the CPU model server, creates an example repo, and
// runs two loops: a scripted agent that ends `done` with a verified commit, and real OpenCode
// on the fixture model that a brake stops, with its blocked look-ups in the audit log.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { queryAudit, formatAuditTable } from '../audit/log.js';
import { newRunId } from '../common/ids.js';
import { stateDir } from '../common/paths.js';
import { parseConfig } from '../config/load.js';
import type { DockerClient } from '../docker/client.js';
import { buildImages } from '../images/builder.js';
import { LOCAL_IMAGE_NAMES } from '../images/catalog.js';
import { type LoopEvent, type LoopSummary, runLoop } from '../loop/loop.js';
import { ensureFixtureModel } from '../model/fixture.js';
import { findModelServer } from '../model/network.js';
import { modelDown, modelUp } from '../model/server.js';
import { createExampleRepo } from './example-repo.js';

export interface DemoOptions {
  /** A real GGUF: then both tasks use OpenCode. */
  gguf?: string | undefined;
  /** `images.caCerts` and `--ca-cert`; NODE_EXTRA_CA_CERTS is added as for `images build`. */
  caCerts?: string[];
  mirror?: string | undefined;
  signal?: AbortSignal;
  say: (line: string) => void;
  onEvent: (event: LoopEvent) => void;
  /** Leave the model server running afterwards. */
  keepModel?: boolean;
  /** A reviewer for the first task (`--review-endpoint`): the loop asks it before `done`. */
  review?: { endpoint: string; model: string; apiKeyEnv?: string | undefined } | undefined;
}

export interface DemoResult {
  repo: string;
  summaries: LoopSummary[];
  auditTable: string;
}

export async function runDemo(docker: DockerClient, options: DemoOptions): Promise<DemoResult> {
  const say = options.say;
  say('demo 1/5: building images (cached when unchanged)');
  // The demo's loops run here: the Swarm runner image (a minute to build) is not needed.
  await buildImages(docker, { only: LOCAL_IMAGE_NAMES, caCerts: options.caCerts ?? [], mirror: options.mirror, onLine: (l) => say(`  ${l}`) });
  say('demo 2/5: model');
  const gguf = options.gguf ?? (await ensureFixtureModel(docker));
  const hadModel = Boolean(await findModelServer(docker));
  const up = await modelUp(docker, { gguf, ctxSize: 65536, parallel: 1, gpuLayers: 99, gpus: 'auto', startTimeoutMs: 180_000 });
  say(`  model server ${up.reused ? 'already running' : 'started'} at ${up.ip}:8080 with ${path.basename(gguf)}${options.gguf ? '' : ' (tiny random-weight fixture: real server, answers are noise)'}`);
  try {
    const repo = path.join(stateDir(), 'demo', newRunId());
    await mkdir(repo, { recursive: true });
    await createExampleRepo(repo);
    say(`demo 3/5: example repository with a failing test at ${repo}`);
    const base = {
      verify: { command: ['node', 'test/calc.test.js'], timeout: '2m' },
      protectedPaths: ['test/**', 'tools/**'],
      sandbox: { memory: '2g', cpus: 1, pids: 256 },
      loop: { maxIterations: 4, noProgress: 2 },
    };
    const review = options.review ? { review: { endpoint: options.review.endpoint, model: options.review.model, ...(options.review.apiKeyEnv ? { apiKeyEnv: options.review.apiKeyEnv } : {}) } } : {};
    const scripted = parseConfig({ ...base, ...review, agent: { type: 'command', command: ['node', 'tools/scripted-agent.mjs'], timeout: '2m' } });
    const opencodeInput = {
      ...base,
      agent: { type: 'opencode', timeout: options.gguf ? '20m' : '90s', contextLimit: 65536, outputLimit: 512 },
      loop: { maxIterations: options.gguf ? 8 : 3, noProgress: 2 },
    };
    const opencode = parseConfig(opencodeInput);
    const summaries: LoopSummary[] = [];
    say(`demo 4/5: task fix-add with ${options.gguf ? 'OpenCode' : 'a scripted agent (command adapter)'}`);
    if (options.review) say(`  review step on: verified work goes to ${options.review.endpoint} (${options.review.model}) from the host; only an approval ends done`);
    summaries.push(await runLoop(docker, { repo, taskFile: path.join(repo, 'tasks', 'fix-add.md'), config: options.gguf ? parseConfig({ ...opencodeInput, ...review }) : scripted, signal: options.signal, onEvent: options.onEvent, trigger: 'demo' }));
    if (!options.signal?.aborted) {
      say('demo 5/5: task opencode-add with real OpenCode on the same model');
      summaries.push(await runLoop(docker, { repo, taskFile: path.join(repo, 'tasks', 'opencode-add.md'), config: opencode, signal: options.signal, onEvent: options.onEvent, trigger: 'demo' }));
    }
    const audit = await queryAudit({ runId: summaries[1]?.runId ?? summaries[0]?.runId });
    return { repo, summaries, auditTable: audit.length ? formatAuditTable(audit) : '(no blocked attempts)' };
  } finally {
    if (!hadModel && !options.keepModel) await modelDown(docker);
  }
}
