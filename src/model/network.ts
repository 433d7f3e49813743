// The model network: an `--internal` Docker network shared by the model server and every
// sentry. Internal means Docker gives it no route out: a second wall behind the firewall.
import type { DockerClient } from '../docker/client.js';
import { LABELS, SHARED_RUN_ID, resourceLabels } from '../docker/labels.js';

export const MODEL_NETWORK = 'loopbox-model';
/** A plain bridge used only when the user allows an endpoint outside the model network. */
export const EGRESS_NETWORK = 'loopbox-egress';
export const MODEL_PORT = 8080;
export const MODEL_HOSTNAME = 'model';

export async function ensureNetwork(docker: DockerClient, name: string, internal: boolean): Promise<void> {
  const existing = await docker.findNetwork(name);
  if (existing) {
    if (existing.Labels?.[LABELS.managed] !== 'true') {
      throw new Error(`A Docker network named ${name} exists but loopbox did not create it; remove or rename it.`);
    }
    if (existing.Internal !== internal) {
      throw new Error(`Network ${name} exists with internal=${String(existing.Internal)}, expected ${String(internal)}; run \`loopbox gc --all\`.`);
    }
    return;
  }
  try {
    await docker.createNetwork({ name, internal, labels: resourceLabels({ runId: SHARED_RUN_ID, role: 'network' }) });
  } catch (error) {
    // Another loopbox process may have created it a moment ago.
    if (!(await docker.findNetwork(name))) throw error;
  }
}

export interface ModelEndpoint {
  containerId: string;
  ip: string;
  port: number;
}

/** The running managed model server on the model network, if any. */
export async function findModelServer(docker: DockerClient): Promise<ModelEndpoint | undefined> {
  const containers = await docker.api.listContainers({
    filters: JSON.stringify({ label: [`${LABELS.managed}=true`, `${LABELS.role}=model`], status: ['running'] }),
  });
  for (const c of containers) {
    const ip = c.NetworkSettings?.Networks?.[MODEL_NETWORK]?.IPAddress;
    if (ip) return { containerId: c.Id, ip, port: MODEL_PORT };
  }
  return undefined;
}
