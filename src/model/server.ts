// The managed llama-server: one container on the internal model network, reachable by the
// sandboxes as `model:8080`, with no route out. GGUF mounted read-only from the host.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, ContainerError, LoopboxError } from '../common/errors.js';
import { type ContainerSpec, type DockerClient, sleep } from '../docker/client.js';
import { SHARED_RUN_ID, resourceLabels } from '../docker/labels.js';
import { imageRef } from '../images/catalog.js';
import { expandHome } from '../common/paths.js';
import { MODEL_HOSTNAME, MODEL_NETWORK, MODEL_PORT, ensureNetwork, findModelServer, type ModelEndpoint } from './network.js';

export const MODEL_CONTAINER = 'loopbox-model';
/** The upstream CUDA build of llama-server, used when the engine has the NVIDIA runtime. */
export const CUDA_IMAGE = 'ghcr.io/ggml-org/llama.cpp:server-cuda';

export interface ModelServerOptions {
  gguf: string;
  ctxSize: number;
  parallel: number;
  gpuLayers: number;
  gpus: 'auto' | 'all' | 'none' | string[];
  image?: string | undefined;
  startTimeoutMs: number;
  /** Extra llama-server flags (tests: `--metrics`). */
  extraArgs?: string[];
}

export function llamaServerArgs(options: Pick<ModelServerOptions, 'ctxSize' | 'parallel' | 'gpuLayers' | 'extraArgs'>, modelFile: string, gpu: boolean): string[] {
  return [
    '--host', '0.0.0.0',
    // Pinned: upstream is moving the default port away from 8080.
    '--port', String(MODEL_PORT),
    '-m', modelFile,
    '--ctx-size', String(options.ctxSize),
    '--parallel', String(options.parallel),
    '--jinja',
    '--metrics',
    '--slots',
    ...(gpu ? ['--n-gpu-layers', String(options.gpuLayers)] : []),
    ...(options.extraArgs ?? []),
  ];
}

export async function modelUp(docker: DockerClient, options: ModelServerOptions): Promise<ModelEndpoint & { reused: boolean }> {
  const gguf = path.resolve(expandHome(options.gguf));
  const existing = await findModelServer(docker);
  if (existing) {
    // `model up` mounts the file; Compose mounts its folder.
    const serving = (await docker.inspect(existing.containerId)).HostConfig.Binds?.[0]?.split(':')[0];
    if (serving && serving !== gguf && !gguf.startsWith(`${serving}/`)) {
      throw new LoopboxError(`The model server is already running with ${serving}, not ${gguf}.`, { hint: 'Stop it first with `loopbox model down`, or leave --gguf out to use it.' });
    }
    return { ...existing, reused: true };
  }
  const info = await stat(gguf).catch(() => undefined);
  if (!info?.isFile()) {
    throw new ConfigError(`Model file ${gguf} does not exist.`, [], { hint: 'Set model.gguf in loopbox.yaml, or download one with `loopbox model pull URL`.' });
  }
  const engine = await docker.info();
  const gpu = options.gpus === 'none' ? false : options.gpus === 'auto' ? engine.runtimes.includes('nvidia') : true;
  const image = options.image ?? (gpu ? CUDA_IMAGE : imageRef('llama-cpu'));
  if (!(await docker.findImage(image))) {
    throw new LoopboxError(`Model server image ${image} is not present.`, {
      hint: gpu ? `docker pull ${image}, or set model.gpus: none to use the CPU build.` : 'Run `loopbox images build`.',
    });
  }
  await ensureNetwork(docker, MODEL_NETWORK, true);
  // Remove a stopped leftover of the same name (a crash, a reboot).
  await docker.remove(MODEL_CONTAINER);
  const spec: ContainerSpec = {
    name: MODEL_CONTAINER,
    image,
    cmd: llamaServerArgs(options, `/models/${path.basename(gguf)}`, gpu),
    labels: resourceLabels({ runId: SHARED_RUN_ID, role: 'model' }),
    networkMode: MODEL_NETWORK,
    aliases: [MODEL_HOSTNAME],
    binds: [{ host: gguf, container: `/models/${path.basename(gguf)}`, readOnly: true }],
    capDrop: ['ALL'],
    securityOpt: ['no-new-privileges'],
    exposedPorts: [MODEL_PORT],
    ...(gpu ? { gpus: Array.isArray(options.gpus) ? options.gpus : ('all' as const) } : {}),
  };
  const id = await docker.createContainer(spec);
  try {
    await docker.start(id);
    await waitHealthy(docker, id, image, options.startTimeoutMs);
  } catch (error) {
    await docker.remove(id);
    throw error;
  }
  const endpoint = await findModelServer(docker);
  if (!endpoint) throw new LoopboxError('The model server started but has no address on the model network.');
  return { ...endpoint, reused: false };
}

/** Polls `/health` from inside the container (the host has no route into the internal network). */
export async function waitHealthy(docker: DockerClient, id: string, image: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = (await docker.inspect(id)).State;
    if (!state.Running) {
      throw new ContainerError('The model server exited while starting', { image, containerId: id, role: 'model', exitCode: state.ExitCode, logTail: await docker.logs(id, 20) });
    }
    const probe = await docker.exec(id, ['curl', '-sf', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${MODEL_PORT}/health`]).catch(() => undefined);
    if (probe?.exitCode === 0) return;
    if (Date.now() > deadline) {
      throw new ContainerError(`The model server was not healthy within ${Math.round(timeoutMs / 1000)} s`, {
        image,
        containerId: id,
        role: 'model',
        timedOut: true,
        logTail: await docker.logs(id, 20),
      });
    }
    await sleep(250);
  }
}

export async function modelDown(docker: DockerClient): Promise<boolean> {
  const existing = await docker.inspect(MODEL_CONTAINER).catch(() => undefined);
  if (!existing) return false;
  await docker.remove(MODEL_CONTAINER);
  return true;
}

export interface ModelStatus {
  running: boolean;
  containerId?: string;
  ip?: string;
  model?: string;
  slots?: { busy: number; total: number };
  metrics?: Record<string, number>;
}

/** Whether this host reaches the model network directly (Linux: the bridge has an address). */
let directHttp: boolean | undefined;

/**
 * GET a path of the managed server. Straight to its address when the host can route to the
 * internal network (a few ms); otherwise `curl` inside its container (a docker exec, ~60 ms).
 */
export async function modelGet(docker: DockerClient, endpoint: ModelEndpoint, p: string): Promise<string | undefined> {
  if (directHttp !== false) {
    try {
      const res = await fetch(`http://${endpoint.ip}:${endpoint.port}${p}`, { signal: AbortSignal.timeout(1000) });
      directHttp = true;
      return res.ok ? await res.text() : undefined;
    } catch {
      if (directHttp === undefined) directHttp = false;
      else return undefined;
    }
  }
  const r = await docker.exec(endpoint.containerId, ['curl', '-sf', `http://127.0.0.1:${MODEL_PORT}${p}`]).catch(() => undefined);
  return r?.exitCode === 0 ? r.stdout : undefined;
}

/** Model name, busy/total slots (`/slots`) and throughput counters (`/metrics`). */
export async function modelStatus(docker: DockerClient): Promise<ModelStatus> {
  const endpoint = await findModelServer(docker);
  if (!endpoint) return { running: false };
  const get = (p: string): Promise<string | undefined> => modelGet(docker, endpoint, p);
  const status: ModelStatus = { running: true, containerId: endpoint.containerId, ip: endpoint.ip };
  const models = await get('/v1/models');
  if (models) status.model = (JSON.parse(models) as { data?: Array<{ id: string }> }).data?.[0]?.id;
  const slots = await get('/slots');
  const use = slots === undefined ? undefined : parseSlots(slots);
  if (use) status.slots = use;
  const metrics = await get('/metrics');
  if (metrics) status.metrics = parsePrometheus(metrics);
  return status;
}

/** Busy and total slots from a `/slots` answer (llama-server's list of slots); undefined when it is not one. */
export function parseSlots(text: string): { busy: number; total: number } | undefined {
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(list)) return undefined;
  const slots = list as Array<{ is_processing?: unknown } | null>;
  return { busy: slots.filter((s) => s?.is_processing === true).length, total: slots.length };
}

/**
 * The model's slots now: the managed server's `/slots`, or, with `endpoint` (model.endpoint),
 * `/slots` at that URL's origin when it is a llama-server. Undefined when nothing answers.
 */
export async function modelSlotUse(docker: DockerClient, endpoint?: string): Promise<{ busy: number; total: number } | undefined> {
  if (endpoint !== undefined) {
    const res = await fetch(new URL('/slots', endpoint), { signal: AbortSignal.timeout(1000) }).catch(() => undefined);
    return res?.ok ? parseSlots(await res.text()) : undefined;
  }
  const server = await findModelServer(docker).catch(() => undefined);
  if (!server) return undefined;
  const text = await modelGet(docker, server, '/slots');
  return text === undefined ? undefined : parseSlots(text);
}

export function parsePrometheus(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)\s+([-+\d.eE]+|NaN)$/.exec(line.trim());
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}
