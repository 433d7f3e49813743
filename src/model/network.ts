// The model network: an `--internal` Docker network shared by the model server and every
// sentry. Internal means Docker gives it no route out: a second wall behind the firewall.
import { LoopboxError } from '../common/errors.js';
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
      throw new LoopboxError(`A Docker network named ${name} exists, but loopbox did not create it.`, {
        hint: `loopbox needs that name for its own network: remove or rename the other one (docker network rm ${name}), if nothing of yours uses it.`,
      });
    }
    if (existing.Internal !== internal) {
      throw new LoopboxError(`Network ${name} exists with internal=${String(existing.Internal)}, expected ${String(internal)}.`, {
        hint: 'Stop the loops and the model server (loopbox model down), then run `loopbox gc --all` to remove it; loopbox makes it again.',
      });
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
  // Running ones only (the default).
  for (const c of await docker.listContainers([`${LABELS.managed}=true`, `${LABELS.role}=model`])) {
    const ip = c.networks[MODEL_NETWORK]?.ip;
    if (ip) return { containerId: c.id, ip, port: MODEL_PORT };
  }
  return undefined;
}
