// A thin, typed facade over dockerode, split by resource as testcontainers-node does:
// containers.ts, networks.ts (and volumes), images.ts, streams.ts (attach, logs, exec, progress).
// The rest of loopbox talks to `DockerClient`, never to dockerode: `api` is private, and a failed
// call comes out as a DockerApiError (errors.ts) naming the operation, status and resource.
import type { Readable } from 'node:stream';
import Docker from 'dockerode';
import { DockerUnavailableError } from '../common/errors.js';
import * as containers from './containers.js';
import { wrapApiError } from './errors.js';
import * as images from './images.js';
import { LABELS } from './labels.js';
import * as networks from './networks.js';
import * as streams from './streams.js';
import * as swarm from './swarm.js';
import type { BuildOptions, ContainerSpec, ContainerSummary, EngineInfo, ExecResult, ImageSummary, ManagedResource, NetworkSpec, WaitResult } from './types.js';

export type { Bind, BuildOptions, ContainerSpec, ContainerSummary, EngineInfo, ExecResult, ImageSummary, ManagedResource, NetworkSpec, WaitResult } from './types.js';
export { BuildFailure } from './images.js';
export { DockerApiError, isGone } from './errors.js';
export { demuxBuffer } from './streams.js';
export type { ServiceSummary, SwarmNode, SwarmState, SwarmTask } from './swarm.js';

export class DockerClient {
  private readonly api: Docker;

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

  /** Containers, networks and volumes matching a label filter (always includes `loopbox.managed`). */
  async listManaged(filters: { label: string[] }): Promise<ManagedResource[]> {
    const f = JSON.stringify(filters);
    const [containers, networks, volumes] = await Promise.all([
      this.api.listContainers({ all: true, filters: f }),
      this.api.listNetworks({ filters: f }),
      this.api.listVolumes({ filters: f }),
    ]).catch((error: unknown) => {
      throw wrapApiError(error, `listing resources labelled ${filters.label.join(', ')}`);
    });
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

  // Containers

  createContainer(spec: ContainerSpec): Promise<string> {
    return containers.createContainer(this.api, spec);
  }

  start(id: string): Promise<void> {
    return containers.startContainer(this.api, id);
  }

  /** Waits for the container to exit; on timeout kills it and says so. */
  wait(id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
    return containers.waitContainer(this.api, id, timeoutMs, signal);
  }

  /** Starts a created container and waits for it to exit; on timeout kills it. */
  startAndWait(id: string, timeoutMs?: number, signal?: AbortSignal): Promise<WaitResult> {
    return containers.startAndWait(this.api, id, timeoutMs, signal);
  }

  kill(id: string, signal = 'SIGKILL'): Promise<void> {
    return containers.killContainer(this.api, id, signal);
  }

  stop(id: string, graceSeconds = 5): Promise<void> {
    return containers.stopContainer(this.api, id, graceSeconds);
  }

  /** Idempotent: removing a container that is already gone is fine. */
  remove(id: string): Promise<void> {
    return containers.removeContainer(this.api, id);
  }

  inspect(id: string): Promise<Docker.ContainerInspectInfo> {
    return containers.inspectContainer(this.api, id);
  }

  /** Containers matching every `key=value` label; running ones only unless `all`. */
  listContainers(labels: string[], options: { all?: boolean; id?: string } = {}): Promise<ContainerSummary[]> {
    return containers.listContainers(this.api, labels, options);
  }

  /** Unpacks a tar stream into the container at `path`. */
  putArchive(id: string, tar: Readable | Buffer, path: string): Promise<void> {
    return containers.putArchive(this.api, id, tar, path);
  }

  /** A tar stream of `path` in the container. */
  getArchive(id: string, path: string): Promise<Readable> {
    return containers.getArchive(this.api, id, path);
  }

  /** The processes running in the container (`docker top`): one row of columns each. */
  processes(id: string): Promise<string[][]> {
    return containers.containerProcesses(this.api, id);
  }

  // Streams

  /** Attach to stdout/stderr before start; `drained(ms)` resolves once the output has ended. */
  attach(id: string): Promise<{ stdout: Readable; stderr: Readable; drained: (ms: number) => Promise<void> }> {
    return streams.attachContainer(this.api, id);
  }

  logs(id: string, tail = 30): Promise<string> {
    return streams.containerLogs(this.api, id, tail);
  }

  exec(id: string, cmd: string[], user?: string): Promise<ExecResult> {
    return streams.execInContainer(this.api, id, cmd, user);
  }

  /** Waits until a line matching `pattern` appears in the container's output. */
  waitForLog(id: string, pattern: RegExp, timeoutMs: number, image: string, role?: string): Promise<void> {
    return streams.waitForLog(this.api, id, pattern, timeoutMs, image, role);
  }

  // Networks and volumes

  createNetwork(spec: NetworkSpec): Promise<string> {
    return networks.createNetwork(this.api, spec);
  }

  findNetwork(name: string): Promise<Docker.NetworkInspectInfo | undefined> {
    return networks.findNetwork(this.api, name);
  }

  connectNetwork(network: string, containerId: string, aliases?: string[]): Promise<void> {
    return networks.connectNetwork(this.api, network, containerId, aliases);
  }

  removeNetwork(idOrName: string): Promise<void> {
    return networks.removeNetwork(this.api, idOrName);
  }

  removeVolume(name: string): Promise<void> {
    return networks.removeVolume(this.api, name);
  }

  // Swarm mode (src/cluster): the engine's scheduler for loops on several machines.

  swarmState(): Promise<swarm.SwarmState> {
    return swarm.swarmState(this.api);
  }

  listNodes(): Promise<swarm.SwarmNode[]> {
    return swarm.listNodes(this.api);
  }

  updateNodeLabels(nodeId: string, change: (labels: Record<string, string>) => Record<string, string>): Promise<void> {
    return swarm.updateNodeLabels(this.api, nodeId, change);
  }

  createService(spec: Record<string, unknown>): Promise<string> {
    return swarm.createService(this.api, spec);
  }

  listServices(labels: string[]): Promise<swarm.ServiceSummary[]> {
    return swarm.listServices(this.api, labels);
  }

  removeService(idOrName: string): Promise<void> {
    return swarm.removeService(this.api, idOrName);
  }

  listTasks(serviceId: string): Promise<swarm.SwarmTask[]> {
    return swarm.listTasks(this.api, serviceId);
  }

  serviceLogs(serviceId: string, tail?: number): Promise<string> {
    return swarm.serviceLogs(this.api, serviceId, tail);
  }

  createSecret(name: string, data: string, labels: Record<string, string>): Promise<string> {
    return swarm.createSecret(this.api, name, data, labels);
  }

  removeSecret(idOrName: string): Promise<void> {
    return swarm.removeSecret(this.api, idOrName);
  }

  // Images

  listImages(labelFilter: string[]): Promise<ImageSummary[]> {
    return images.listImages(this.api, labelFilter);
  }

  /** Labels and id of an image, or undefined when it does not exist locally. */
  findImage(ref: string): ReturnType<typeof images.findImage> {
    return images.findImage(this.api, ref);
  }

  removeImage(ref: string): Promise<void> {
    return images.removeImage(this.api, ref);
  }

  /** The commands that made each layer of an image, newest first. */
  imageHistory(ref: string): Promise<string[]> {
    return images.imageHistory(this.api, ref);
  }

  /** Tries a registry pull; resolves false (not throws) when no registry answers. */
  tryPull(ref: string, onLine?: (line: string) => void): Promise<boolean> {
    return images.tryPull(this.api, ref, onLine);
  }

  /** Imports a root filesystem tar stream as an image (for bases made with debootstrap). */
  importRootfs(tar: Readable, repo: string, tag: string, changes: string[]): Promise<void> {
    return images.importRootfs(this.api, tar, repo, tag, changes);
  }

  /** Builds from a context tar; streams progress lines; errors carry the last lines. */
  build(context: Readable, options: BuildOptions): Promise<void> {
    return images.buildImage(this.api, context, options);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export { LABELS };
