// The facade's own types: what loopbox asks of a container, a network, an image.
import type { Labels } from './labels.js';

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
  kind: 'container' | 'network' | 'volume' | 'service';
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

export interface ContainerSummary {
  id: string;
  name: string;
  labels: Labels;
  state: string;
  /** Networks the container is on, with its address on each. */
  networks: Record<string, { ip: string }>;
}
