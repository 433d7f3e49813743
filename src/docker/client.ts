// A thin, typed facade over dockerode. The rest of loopbox talks to `DockerClient`, never to
// dockerode, so tests of higher layers can use a fake and errors come out with context.
import { PassThrough, type Readable } from 'node:stream';
import Docker from 'dockerode';
import { ContainerError, DockerUnavailableError, RecentLines, describe } from '../common/errors.js';
import type { Labels } from './labels.js';
import { LABELS } from './labels.js';

export interface Bind {
  host: string;
  container: string;
  readOnly: boolean;
}

export interface ContainerSpec {
  name?: string;
  image: string;
  cmd?: string[];
  entrypoint?: string[];
  env?: Record<string, string>;
  user?: string;
  workingDir?: string;
  labels: Labels;
  /** `container:<id>` to join another container's network namespace, `none`, or a network name. */
  networkMode?: string;
  /** Aliases on `networkMode` when it names a network. */
  aliases?: string[];
  capDrop?: string[];
  capAdd?: string[];
  securityOpt?: string[];
  readonlyRootfs?: boolean;
  tmpfs?: Record<string, string>;
  binds?: Bind[];
  pidsLimit?: number;
  memoryBytes?: number;
  nanoCpus?: number;
  sysctls?: Record<string, string>;
  dns?: string[];
  /** Run an init (tini) as pid 1 so signals and zombies are handled. */
  init?: boolean;
  /** Docker removes the container itself when it exits (nothing to reap after a crash of loopbox). */
  autoRemove?: boolean;
  /** GPU request: 'all' or a list of device ids. */
  gpus?: 'all' | string[];
  exposedPorts?: number[];
}

export interface WaitResult {
  exitCode: number;
  timedOut: boolean;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface NetworkSpec {
  name: string;
  internal: boolean;
  labels: Labels;
  ipv6Subnet?: string;
  subnet?: string;
}

export interface ManagedResource {
  kind: 'container' | 'network' | 'volume';
  id: string;
  name: string;
  labels: Labels;
  state?: string;
}

export interface EngineInfo {
  serverVersion: string;
  apiVersion: string;
  storageDriver: string;
  runtimes: string[];
  operatingSystem: string;
  cgroupVersion: string;
}

export interface ImageSummary {
  id: string;
  tags: string[];
  labels: Labels;
  created: number;
  size: number;
}

export interface BuildOptions {
  tag: string;
  labels: Labels;
  buildArgs: Record<string, string>;
  onLine?: (line: string) => void;
}

export class DockerClient {
  readonly api: Docker;

  constructor(options?: Docker.DockerOptions) {
    this.api = new Docker(options);
  }

  async info(): Promise<EngineInfo> {
    try {
      const [info, version] = await Promise.all([
        this.api.info() as Promise<Record<string, unknown>>,
        this.api.version(),
      ]);
      const text = (value: unknown): string => (typeof value === 'string' ? value : '');
      return {
        serverVersion: text(info.ServerVersion) || version.Version,
        apiVersion: version.ApiVersion,
        storageDriver: text(info.Driver),
        runtimes: Object.keys((info.Runtimes as Record<string, unknown> | undefined) ?? {}),
        operatingSystem: text(info.OperatingSystem),
        cgroupVersion: text(info.CgroupVersion),
      };
    } catch (error) {
      throw new DockerUnavailableError(error);
    }
  }

  async ping(): Promise<void> {
    try {
      await this.api.ping();
    } catch (error) {
      throw new DockerUnavailableError(error);
    }
  }

  async createContainer(spec: ContainerSpec): Promise<string> {
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
      const container = await this.api.createContainer(options);
      return container.id;
    } catch (error) {
      throw wrapApiError(error, `creating a container from ${spec.image}`);
    }
  }

  async start(id: string): Promise<void> {
    try {
      await this.api.getContainer(id).start();
    } catch (error) {
      throw wrapApiError(error, `starting container ${id.slice(0, 12)}`);
    }
  }

  /**
   * Attach to stdout/stderr before start. `drained(ms)` resolves once the output has ended
   * (or after `ms`, for a stream that never ends); it is set up now, so a container that is
   * already gone when the caller asks does not cost the full wait.
   */
  async attach(id: string): Promise<{ stdout: Readable; stderr: Readable; drained: (ms: number) => Promise<void> }> {
    const stream = (await this.api.getContainer(id).attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    this.api.modem.demuxStream(stream, stdout, stderr);
    const ended = new Promise<void>((resolve) => {
      stream.on('end', () => {
        stdout.end();
        stderr.end();
        resolve();
      });
      stream.on('close', () => resolve());
    });
    const drained = (ms: number): Promise<void> => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([ended, new Promise<void>((r) => (timer = setTimeout(r, ms)))]).finally(() => clearTimeout(timer));
    };
    return { stdout, stderr, drained };
  }

  /** Waits for the container to exit; on timeout kills it and says so. */
  async wait(id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
    return this.awaitExit(id, this.api.getContainer(id).wait() as Promise<{ StatusCode: number }>, timeoutMs, signal);
  }

  /**
   * Starts a created container and waits for it to exit; on timeout kills it. The wait is
   * registered before the start, so a container that exits (and, with autoRemove, is removed)
   * at once is still seen exiting.
   */
  async startAndWait(id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
    const exited = this.api.getContainer(id).wait({ condition: 'next-exit' }) as Promise<{ StatusCode: number }>;
    exited.catch(() => undefined); // awaited below; a failed start must not leave it unhandled
    await this.start(id);
    return this.awaitExit(id, exited, timeoutMs, signal);
  }

  private async awaitExit(id: string, exited: Promise<{ StatusCode: number }>, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    // A kill that fails (the engine hiccups) must never become an unhandled rejection: the
    // container's own deadline (see sandbox/specs.ts) still ends it.
    const kill = (): void => {
      this.kill(id).catch(() => undefined);
    };
    signal?.addEventListener('abort', kill, { once: true });
    if (signal?.aborted) kill();
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        kill();
      }, timeoutMs);
    }
    try {
      const result = await exited.catch((error: unknown) => {
        // Removed from outside (or by autoRemove) before the wait saw it: it is gone.
        if (isGone(error)) return { StatusCode: 137 };
        throw wrapApiError(error, `waiting for container ${id.slice(0, 12)}`);
      });
      return { exitCode: result.StatusCode, timedOut };
    } finally {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', kill);
    }
  }

  async kill(id: string, signal = 'SIGKILL'): Promise<void> {
    try {
      await this.api.getContainer(id).kill({ signal });
    } catch (error) {
      if (!isGone(error) && !isNotRunning(error)) throw wrapApiError(error, `killing container ${id.slice(0, 12)}`);
    }
  }

  async stop(id: string, graceSeconds = 5): Promise<void> {
    try {
      await this.api.getContainer(id).stop({ t: graceSeconds });
    } catch (error) {
      if (!isGone(error) && !isNotRunning(error)) throw wrapApiError(error, `stopping container ${id.slice(0, 12)}`);
    }
  }

  /** Idempotent: removing a container that is already gone is fine. */
  async remove(id: string): Promise<void> {
    try {
      await this.api.getContainer(id).remove({ force: true, v: true });
    } catch (error) {
      if (!isGone(error) && !isRemovalInProgress(error)) throw wrapApiError(error, `removing container ${id.slice(0, 12)}`);
    }
  }

  async inspect(id: string): Promise<Docker.ContainerInspectInfo> {
    try {
      return await this.api.getContainer(id).inspect();
    } catch (error) {
      throw wrapApiError(error, `inspecting container ${id.slice(0, 12)}`);
    }
  }

  async logs(id: string, tail = 30): Promise<string> {
    try {
      const buffer = await this.api.getContainer(id).logs({ stdout: true, stderr: true, tail, follow: false });
      return demuxBuffer(buffer);
    } catch {
      return '';
    }
  }

  async exec(id: string, cmd: string[], user?: string): Promise<ExecResult> {
    const container = this.api.getContainer(id);
    const exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, User: user });
    const stream = await exec.start({ hijack: true, stdin: false });
    const stdout = new RecentText();
    const stderr = new RecentText();
    const out = new PassThrough();
    const err = new PassThrough();
    out.on('data', (c: Buffer) => stdout.push(c));
    err.on('data', (c: Buffer) => stderr.push(c));
    this.api.modem.demuxStream(stream, out, err);
    await new Promise<void>((resolve, reject) => {
      stream.on('end', () => resolve());
      stream.on('error', reject);
    });
    const info = await exec.inspect();
    return { exitCode: info.ExitCode ?? -1, stdout: stdout.text(), stderr: stderr.text() };
  }

  /** Waits until a line matching `pattern` appears in the container's output. */
  /**
   * Waits until a line matching `pattern` appears in the container's output, following the log
   * stream (no polling: several loops starting at once would keep the daemon busy).
   */
  async waitForLog(id: string, pattern: RegExp, timeoutMs: number, image: string, role?: string): Promise<void> {
    const stream = (await this.api.getContainer(id).logs({ follow: true, stdout: true, stderr: true })) as NodeJS.ReadableStream & { destroy?: () => void };
    const out = new PassThrough();
    this.api.modem.demuxStream(stream, out, out);
    let text = '';
    const tail = (): string => text.split('\n').slice(-20).join('\n');
    const what = role ?? 'container';
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new ContainerError(`The ${what} was not ready within ${Math.round(timeoutMs / 1000)} s`, { image, containerId: id, role, timedOut: true, logTail: tail() }));
        }, timeoutMs);
        const settle = (fn: () => void): void => {
          clearTimeout(timer);
          fn();
        };
        out.on('data', (chunk: Buffer) => {
          text += chunk.toString('utf8');
          if (pattern.test(text)) settle(resolve);
        });
        // The follow stream ends when the container stops.
        stream.on('end', () => {
          if (pattern.test(text)) return settle(resolve);
          void this.inspect(id)
            .then((info) => info.State.ExitCode)
            .catch(() => undefined)
            .then((exitCode) => settle(() => reject(new ContainerError(`The ${what} exited before it was ready`, { image, containerId: id, role, exitCode, logTail: tail() }))));
        });
        stream.on('error', (error: Error) => settle(() => reject(error)));
      });
    } finally {
      stream.destroy?.();
    }
  }

  async createNetwork(spec: NetworkSpec): Promise<string> {
    const ipam: Docker.IPAM = { Driver: 'default', Config: [] };
    if (spec.subnet) ipam.Config!.push({ Subnet: spec.subnet });
    if (spec.ipv6Subnet) ipam.Config!.push({ Subnet: spec.ipv6Subnet });
    try {
      const network = await this.api.createNetwork({
        Name: spec.name,
        Driver: 'bridge',
        Internal: spec.internal,
        Labels: spec.labels,
        CheckDuplicate: true,
        EnableIPv6: Boolean(spec.ipv6Subnet),
        IPAM: ipam.Config!.length ? ipam : undefined,
      });
      return network.id;
    } catch (error) {
      throw wrapApiError(error, `creating network ${spec.name}`);
    }
  }

  async findNetwork(name: string): Promise<Docker.NetworkInspectInfo | undefined> {
    try {
      return (await this.api.getNetwork(name).inspect());
    } catch (error) {
      if (isGone(error)) return undefined;
      throw wrapApiError(error, `inspecting network ${name}`);
    }
  }

  async connectNetwork(network: string, containerId: string, aliases?: string[]): Promise<void> {
    try {
      await this.api.getNetwork(network).connect({ Container: containerId, EndpointConfig: aliases ? { Aliases: aliases } : {} });
    } catch (error) {
      throw wrapApiError(error, `connecting ${containerId.slice(0, 12)} to network ${network}`);
    }
  }

  async removeNetwork(idOrName: string): Promise<void> {
    try {
      await this.api.getNetwork(idOrName).remove();
    } catch (error) {
      if (!isGone(error)) throw wrapApiError(error, `removing network ${idOrName}`);
    }
  }

  async removeVolume(name: string): Promise<void> {
    try {
      await this.api.getVolume(name).remove({ force: true });
    } catch (error) {
      if (!isGone(error)) throw wrapApiError(error, `removing volume ${name}`);
    }
  }

  /** Containers, networks and volumes matching a label filter (always includes `loopbox.managed`). */
  async listManaged(filters: { label: string[] }): Promise<ManagedResource[]> {
    const f = JSON.stringify(filters);
    const [containers, networks, volumes] = await Promise.all([
      this.api.listContainers({ all: true, filters: f }),
      this.api.listNetworks({ filters: f }),
      this.api.listVolumes({ filters: f }),
    ]);
    return [
      ...containers.map((c) => ({
        kind: 'container' as const,
        id: c.Id,
        name: (c.Names[0] ?? c.Id).replace(/^\//, ''),
        labels: c.Labels,
        state: c.State,
      })),
      ...networks.map((n) => ({ kind: 'network' as const, id: n.Id, name: n.Name, labels: n.Labels ?? {} })),
      ...(volumes.Volumes ?? []).map((v) => ({ kind: 'volume' as const, id: v.Name, name: v.Name, labels: v.Labels ?? {} })),
    ];
  }

  async listImages(labelFilter: string[]): Promise<ImageSummary[]> {
    const images = await this.api.listImages({ filters: JSON.stringify({ label: labelFilter }) });
    return images.map((i) => ({
      id: i.Id,
      tags: i.RepoTags ?? [],
      labels: i.Labels ?? {},
      created: i.Created,
      size: i.Size,
    }));
  }

  /** Labels and id of an image, or undefined when it does not exist locally. */
  async findImage(ref: string): Promise<{ id: string; labels: Labels; entrypoint: string[] } | undefined> {
    try {
      const info = await this.api.getImage(ref).inspect();
      const entrypoint = info.Config?.Entrypoint as unknown;
      return { id: info.Id, labels: info.Config?.Labels ?? {}, entrypoint: Array.isArray(entrypoint) ? (entrypoint as string[]) : typeof entrypoint === 'string' ? [entrypoint] : [] };
    } catch (error) {
      if (isGone(error)) return undefined;
      throw wrapApiError(error, `inspecting image ${ref}`);
    }
  }

  async removeImage(ref: string): Promise<void> {
    try {
      await this.api.getImage(ref).remove({ force: true });
    } catch (error) {
      if (!isGone(error)) throw wrapApiError(error, `removing image ${ref}`);
    }
  }

  /** Tries a registry pull; resolves false (not throws) when no registry answers. */
  async tryPull(ref: string, onLine?: (line: string) => void): Promise<boolean> {
    try {
      const stream = await this.api.pull(ref);
      await followProgress(this.api, stream, onLine);
      return true;
    } catch (error) {
      onLine?.(`pull ${ref} failed: ${describe(error)}`);
      return false;
    }
  }

  /** Imports a root filesystem tar stream as an image (for bases made with debootstrap). */
  async importRootfs(tar: Readable, repo: string, tag: string, changes: string[]): Promise<void> {
    const stream = await this.api.importImage(tar, { repo, tag, changes } as unknown as object);
    await followProgress(this.api, stream);
  }

  /** Builds from a context tar; streams progress lines; errors carry the last lines. */
  async build(context: Readable, options: BuildOptions): Promise<void> {
    const recent = new RecentLines(30);
    const onLine = (line: string): void => {
      recent.push(`${line}\n`);
      options.onLine?.(line);
    };
    let stream: NodeJS.ReadableStream;
    try {
      stream = await this.api.buildImage(context, {
        t: options.tag,
        labels: options.labels,
        buildargs: options.buildArgs,
        rm: true,
        forcerm: true,
        pull: false,
      } as Docker.ImageBuildOptions);
    } catch (error) {
      throw new BuildFailure(describe(error), recent.toString());
    }
    try {
      await followProgress(this.api, stream, onLine);
    } catch (error) {
      throw new BuildFailure(describe(error), recent.toString());
    }
  }
}

export class BuildFailure extends Error {
  constructor(
    message: string,
    readonly logTail: string,
  ) {
    super(message);
    this.name = 'BuildFailure';
  }
}

interface ProgressEvent {
  stream?: string;
  status?: string;
  progress?: string;
  error?: string;
  errorDetail?: { message?: string };
}

function followProgress(api: Docker, stream: NodeJS.ReadableStream, onLine?: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let failure: string | undefined;
    api.modem.followProgress(
      stream,
      (error: Error | null) => {
        if (error) reject(error);
        else if (failure) reject(new Error(failure));
        else resolve();
      },
      (event: ProgressEvent) => {
        if (event.error) failure = event.errorDetail?.message ?? event.error;
        const text = event.stream ?? event.status ?? event.error;
        if (text && onLine) {
          for (const line of text.split('\n')) if (line.trim()) onLine(line.trimEnd());
        }
      },
    );
  });
}

/** Docker's multiplexed log format: 8-byte headers per frame (stream, size). */
export function demuxBuffer(buffer: Buffer): string {
  if (!Buffer.isBuffer(buffer)) return String(buffer);
  const chunks: Buffer[] = [];
  let offset = 0;
  while (offset + 8 <= buffer.length) {
    const type = buffer[offset];
    const size = buffer.readUInt32BE(offset + 4);
    if (type === undefined || type > 2) return buffer.toString('utf8');
    chunks.push(buffer.subarray(offset + 8, offset + 8 + size));
    offset += 8 + size;
  }
  return Buffer.concat(chunks).toString('utf8');
}

class RecentText {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max = 1 << 20) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.chunks.length > 1) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

function statusCode(error: unknown): number | undefined {
  return typeof error === 'object' && error !== null && 'statusCode' in error ? Number((error).statusCode) : undefined;
}

export function isGone(error: unknown): boolean {
  return statusCode(error) === 404;
}

function isNotRunning(error: unknown): boolean {
  return statusCode(error) === 409 || statusCode(error) === 304;
}

function isRemovalInProgress(error: unknown): boolean {
  return statusCode(error) === 409 && /already in progress/i.test(describe(error));
}

function wrapApiError(error: unknown, what: string): Error {
  const code = (error as { code?: string }).code;
  if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES') return new DockerUnavailableError(error);
  const message = describe(error).replace(/^\(HTTP code \d+\)\s*/, '');
  const wrapped = new Error(`Docker failed ${what}: ${message}`, { cause: error });
  (wrapped as { statusCode?: number }).statusCode = statusCode(error);
  return wrapped;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export { LABELS };
