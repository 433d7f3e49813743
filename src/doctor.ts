// `loopbox doctor`: what this machine's Docker engine offers loopbox, and, when the config asks
// for delivery (loop.push, loop.pullRequest, notify.secretEnv), whether its prerequisites hold.
import type { Config } from './config/schema.js';
import { type DeliveryCheck, deliveryChecks } from './deliver/checks.js';
import type { DockerClient, EngineInfo } from './docker/client.js';
import { imageStatus } from './images/builder.js';
import type { ImageName } from './images/catalog.js';

export interface DoctorReport {
  engine: EngineInfo;
  nvidiaRuntime: boolean;
  images: Array<{ name: ImageName; ref: string; present: boolean }>;
  /** Delivery prerequisites the config calls for; empty when it configures none. */
  delivery: DeliveryCheck[];
}

export interface DoctorOptions {
  /** The project's config: its loop.push, loop.pullRequest and notify are checked. */
  config?: Config | undefined;
  /** The user's repository (the push remote is looked up there); default the working directory. */
  repo?: string | undefined;
  env?: NodeJS.ProcessEnv | undefined;
}

export async function doctor(docker: DockerClient, options: DoctorOptions = {}): Promise<DoctorReport> {
  const engine = await docker.info();
  return {
    engine,
    nvidiaRuntime: engine.runtimes.includes('nvidia'),
    images: await imageStatus(docker),
    delivery: options.config ? await deliveryChecks(options.config, { repo: options.repo ?? process.cwd(), ...(options.env ? { env: options.env } : {}) }) : [],
  };
}
