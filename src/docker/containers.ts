// Containers: create, start, wait (with a deadline and an abort signal), kill, stop, remove,
// inspect, list by label, and copy files in and out (the archive API).
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { DockerUnavailableError } from '../common/errors.js';
import { isGone, isNotRunning, isRemovalInProgress, wrapApiError } from './errors.js';
import type { ContainerSpec, ContainerSummary, WaitResult } from './types.js';

export async function createContainer(api: Docker, spec: ContainerSpec): Promise<string> {
  const env = Object.entries(spec.env ?? {}).map(([k, v]) => `${k}=${v}`);
  const hostConfig: Docker.HostConfig = {
    NetworkMode: spec.networkMode ?? 'none',
    CapDrop: spec.capDrop,
    CapAdd: spec.capAdd,
    SecurityOpt: spec.securityOpt,
    ReadonlyRootfs: spec.readonlyRootfs ?? false,
    Tmpfs: spec.tmpfs,
    Binds: spec.binds?.map((b) => `${b.host}:${b.container}:${b.readOnly ? 'ro' : 'rw'}`),
    PidsLimit: spec.pidsLimit,
    Memory: spec.memoryBytes,
    MemorySwap: spec.memoryBytes,
    NanoCpus: spec.nanoCpus,
    Sysctls: spec.sysctls,
    Dns: spec.dns,
    Init: spec.init,
    AutoRemove: spec.autoRemove ?? false,
  };
  if (spec.gpus) {
    hostConfig.DeviceRequests = [
      spec.gpus === 'all'
        ? { Driver: 'nvidia', Count: -1, Capabilities: [['gpu']] }
        : { Driver: 'nvidia', DeviceIDs: spec.gpus, Capabilities: [['gpu']] },
    ];
  }
  const options: Docker.ContainerCreateOptions = {
    name: spec.name,
    Image: spec.image,
    Cmd: spec.cmd,
    Entrypoint: spec.entrypoint,
    Env: env,
    User: spec.user,
    WorkingDir: spec.workingDir,
    Labels: spec.labels,
    HostConfig: hostConfig,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    OpenStdin: false,
  };
  if (spec.exposedPorts) {
    options.ExposedPorts = Object.fromEntries(spec.exposedPorts.map((p) => [`${p}/tcp`, {}]));
  }
  const mode = spec.networkMode ?? 'none';
  if (spec.aliases && !mode.startsWith('container:') && mode !== 'none') {
    options.NetworkingConfig = { EndpointsConfig: { [mode]: { Aliases: spec.aliases } } };
  }
  try {
    const container = await api.createContainer(options);
    return container.id;
  } catch (error) {
    throw wrapApiError(error, `creating a container from ${spec.image}`, { image: spec.image });
  }
}

export async function startContainer(api: Docker, id: string): Promise<void> {
  try {
    await api.getContainer(id).start();
  } catch (error) {
    throw wrapApiError(error, `starting container ${id.slice(0, 12)}`, { containerId: id });
  }
}

/** Waits for the container to exit; on timeout kills it and says so. */
export async function waitContainer(api: Docker, id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
  return awaitExit(api, id, api.getContainer(id).wait() as Promise<{ StatusCode: number }>, timeoutMs, signal);
}

/**
 * Starts a created container and waits for it to exit; on timeout kills it. The wait is
 * registered before the start, so a container that exits (and, with autoRemove, is removed)
 * at once is still seen exiting.
 */
export async function startAndWait(api: Docker, id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
  const exited = api.getContainer(id).wait({ condition: 'next-exit' }) as Promise<{ StatusCode: number }>;
  exited.catch(() => undefined); // awaited below; a failed start must not leave it unhandled
  await startContainer(api, id);
  return awaitExit(api, id, exited, timeoutMs, signal);
}

async function awaitExit(api: Docker, id: string, exited: Promise<{ StatusCode: number }>, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  // A kill that fails (the engine hiccups) must never become an unhandled rejection: the
  // container's own deadline (see sandbox/specs.ts) still ends it.
  const kill = (): void => {
    killContainer(api, id).catch(() => undefined);
  };
  signal?.addEventListener('abort', kill, { once: true });
  if (signal?.aborted) kill();
  if (timeoutMs !== undefined) {
    timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutMs);
  }
  const watch = watchEngine(api, id);
  try {
    const result = await Promise.race([exited, watch.lost]).catch((error: unknown) => {
      if (error instanceof DockerUnavailableError) throw error;
      // Removed from outside (or by autoRemove) before the wait saw it: it is gone.
      if (isGone(error)) return { StatusCode: 137 };
      throw wrapApiError(error, `waiting for container ${id.slice(0, 12)}`, { containerId: id });
    });
    return { exitCode: result.StatusCode, timedOut };
  } finally {
    watch.stop();
    if (timer) clearTimeout(timer);
    signal?.removeEventListener('abort', kill);
  }
}

/** How often a wait checks that the engine is still there, and how long an exit may go unreported. */
export const ENGINE_WATCH_MS = 2_000;
const UNREPORTED_EXIT_MS = 6_000;

/**
 * A wait is one long HTTP request, and docker-modem never settles one whose connection drops
 * after the headers: when dockerd is killed, the wait would hang for ever (issue 20). So while
 * it runs, the container is inspected every ENGINE_WATCH_MS: `lost` rejects with a
 * DockerUnavailableError when the engine does not answer, or when it answers that the container
 * stopped but the wait has not said so for UNREPORTED_EXIT_MS (the engine restarted under it).
 */
function watchEngine(api: Docker, id: string): { lost: Promise<never>; stop: () => void } {
  let fail: (error: Error) => void = () => undefined;
  const lost = new Promise<never>((_resolve, reject) => (fail = reject));
  lost.catch(() => undefined);
  let busy = false;
  let stoppedSince: number | undefined;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    api
      .getContainer(id)
      .inspect()
      .then(
        (info) => {
          if (info.State.Running) stoppedSince = undefined;
          else if (Date.now() - (stoppedSince ??= Date.now()) >= UNREPORTED_EXIT_MS) {
            fail(new DockerUnavailableError(new Error(`the engine stopped container ${id.slice(0, 12)} without answering the wait for it (it was restarted)`)));
          }
        },
        (error: unknown) => {
          if (isGone(error)) stoppedSince ??= Date.now();
          else if (!statusOf(error)) fail(new DockerUnavailableError(error));
        },
      )
      .finally(() => (busy = false));
  }, ENGINE_WATCH_MS);
  timer.unref();
  return { lost, stop: () => clearInterval(timer) };
}

/** The engine's HTTP status of a failed call; undefined when it did not answer at all. */
function statusOf(error: unknown): number | undefined {
  const code = (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

export async function killContainer(api: Docker, id: string, signal = 'SIGKILL'): Promise<void> {
  try {
    await api.getContainer(id).kill({ signal });
  } catch (error) {
    if (!isGone(error) && !isNotRunning(error)) throw wrapApiError(error, `killing container ${id.slice(0, 12)}`, { containerId: id });
  }
}

export async function stopContainer(api: Docker, id: string, graceSeconds = 5): Promise<void> {
  try {
    await api.getContainer(id).stop({ t: graceSeconds });
  } catch (error) {
    if (!isGone(error) && !isNotRunning(error)) throw wrapApiError(error, `stopping container ${id.slice(0, 12)}`, { containerId: id });
  }
}

/** Idempotent: removing a container that is already gone is fine. */
export async function removeContainer(api: Docker, id: string): Promise<void> {
  try {
    await api.getContainer(id).remove({ force: true, v: true });
  } catch (error) {
    if (!isGone(error) && !isRemovalInProgress(error)) throw wrapApiError(error, `removing container ${id.slice(0, 12)}`, { containerId: id });
  }
}

export async function inspectContainer(api: Docker, id: string): Promise<Docker.ContainerInspectInfo> {
  try {
    return await api.getContainer(id).inspect();
  } catch (error) {
    throw wrapApiError(error, `inspecting container ${id.slice(0, 12)}`, { containerId: id });
  }
}

/** Containers matching a label filter (`key=value` each), running ones only unless `all`. */
export async function listContainers(api: Docker, labels: string[], options: { all?: boolean; id?: string } = {}): Promise<ContainerSummary[]> {
  const filters: Record<string, string[]> = { label: labels };
  if (options.id) filters.id = [options.id];
  try {
    const found = await api.listContainers({ all: options.all ?? false, filters: JSON.stringify(filters) });
    return found.map((c) => ({
      id: c.Id,
      name: (c.Names[0] ?? c.Id).replace(/^\//, ''),
      labels: c.Labels,
      state: c.State,
      networks: Object.fromEntries(Object.entries(c.NetworkSettings?.Networks ?? {}).map(([name, n]) => [name, { ip: n.IPAddress }])),
    }));
  } catch (error) {
    throw wrapApiError(error, `listing containers labelled ${labels.join(', ')}`);
  }
}

/** Unpacks a tar stream into the container's file system at `path` (the container need not run). */
export async function putArchive(api: Docker, id: string, tar: Readable | Buffer, path: string): Promise<void> {
  try {
    await api.getContainer(id).putArchive(tar, { path });
  } catch (error) {
    throw wrapApiError(error, `copying files into container ${id.slice(0, 12)}`, { containerId: id });
  }
}

/** A tar stream of `path` in the container. */
export async function getArchive(api: Docker, id: string, path: string): Promise<Readable> {
  try {
    return (await api.getContainer(id).getArchive({ path })) as unknown as Readable;
  } catch (error) {
    throw wrapApiError(error, `copying ${path} out of container ${id.slice(0, 12)}`, { containerId: id });
  }
}

/** The processes running in the container (`docker top`). */
export async function containerProcesses(api: Docker, id: string): Promise<string[][]> {
  try {
    const top = (await api.getContainer(id).top()) as { Processes?: string[][] };
    return top.Processes ?? [];
  } catch (error) {
    throw wrapApiError(error, `listing the processes of container ${id.slice(0, 12)}`, { containerId: id });
  }
}
