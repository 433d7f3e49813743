// `loopbox doctor`: what this machine's Docker engine offers loopbox.
import type { DockerClient, EngineInfo } from './docker/client.js';
import { imageStatus } from './images/builder.js';
import type { ImageName } from './images/catalog.js';

export interface DoctorReport {
  engine: EngineInfo;
  nvidiaRuntime: boolean;
  images: Array<{ name: ImageName; ref: string; present: boolean }>;
}

export async function doctor(docker: DockerClient): Promise<DoctorReport> {
  const engine = await docker.info();
  return {
    engine,
    nvidiaRuntime: engine.runtimes.includes('nvidia'),
    images: await imageStatus(docker),
  };
}
