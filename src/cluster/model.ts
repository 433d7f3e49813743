// `loopbox swarm model up`: llama-server on every labelled node, as a Swarm *global* service of
// keepers. Each keeper is the runner image on one node with that node's engine socket: it runs
// the ordinary node-local `loopbox-model` container (network loopbox-model, --internal), so the
// loops the runner starts on that node use that node's model exactly as a local run does.
import path from 'node:path';
import { LoopboxError, describe } from '../common/errors.js';
import type { DockerClient } from '../docker/client.js';
import { LABELS, SHARED_RUN_ID, resourceLabels } from '../docker/labels.js';
import { imageRef } from '../images/catalog.js';
import { findModelServer } from '../model/network.js';
import { type ModelServerOptions, modelDown, modelUp } from '../model/server.js';
import { checkSwarm, labelledNodes } from './preflight.js';
import { DOCKER_SOCKET, PLACEMENT } from './spec.js';

export const KEEPER_SERVICE = 'loopbox-model-keeper';

export interface SwarmModelOptions extends ModelServerOptions {
  runnerImage?: string | undefined;
}

export async function swarmModelUp(docker: DockerClient, options: SwarmModelOptions): Promise<{ serviceId: string; nodes: string[] }> {
  await checkSwarm(docker);
  const nodes = await labelledNodes(docker);
  const ref = options.runnerImage ?? imageRef('runner');
  const image = await docker.findImage(ref);
  if (!image) throw new LoopboxError(`The runner image ${ref} is not on this machine.`, { hint: 'loopbox images build --only runner, then docker save | docker load it onto every labelled node.' });
  const existing = await docker.listServices([`${LABELS.managed}=true`, `${LABELS.role}=model-keeper`]);
  if (existing.length) return { serviceId: existing[0]!.id, nodes: nodes.map((n) => n.hostname) };
  const gguf = path.resolve(options.gguf);
  const labels = resourceLabels({ runId: SHARED_RUN_ID, role: 'model-keeper' });
  const { runnerImage: _ignored, ...serverOptions } = options;
  const serviceId = await docker.createService({
    Name: KEEPER_SERVICE,
    Labels: labels,
    TaskTemplate: {
      ContainerSpec: {
        Image: image.id,
        Labels: labels,
        Args: ['swarm', 'model-keeper'],
        Env: [`LOOPBOX_KEEPER=${Buffer.from(JSON.stringify({ ...serverOptions, gguf })).toString('base64')}`, ...(process.env.LOOPBOX_IMAGE_TAG ? [`LOOPBOX_IMAGE_TAG=${process.env.LOOPBOX_IMAGE_TAG}`] : [])],
        Mounts: [
          { Type: 'bind', Source: DOCKER_SOCKET, Target: DOCKER_SOCKET },
          // The GGUF at the same path: the keeper checks it, the node's engine mounts it.
          { Type: 'bind', Source: path.dirname(gguf), Target: path.dirname(gguf), ReadOnly: true },
        ],
        StopGracePeriod: 30_000_000_000,
        Init: true,
      },
      Placement: { Constraints: [PLACEMENT] },
      RestartPolicy: { Condition: 'on-failure', Delay: 5_000_000_000, MaxAttempts: 5 },
    },
    Mode: { Global: {} },
  });
  return { serviceId, nodes: nodes.map((n) => n.hostname) };
}

export async function swarmModelDown(docker: DockerClient): Promise<boolean> {
  const services = await docker.listServices([`${LABELS.managed}=true`, `${LABELS.role}=model-keeper`]);
  for (const s of services) await docker.removeService(s.id);
  return services.length > 0;
}

/**
 * The keeper's own loop (inside the runner image, on one node): start or adopt the node's model
 * server, start it again if it dies, and on SIGTERM stop it, only if this keeper started it.
 */
export async function keepModel(docker: DockerClient, options: ModelServerOptions, signal: AbortSignal, say: (line: string) => void): Promise<void> {
  const up = await modelUp(docker, options);
  let started = !up.reused;
  say(`model server ${up.reused ? 'already running (adopted)' : 'started'} at ${up.ip}:${up.port}`);
  while (!signal.aborted) {
    await new Promise((r) => setTimeout(r, 5_000));
    if (signal.aborted) break;
    if (!(await findModelServer(docker))) {
      say('model server gone: starting it again');
      try {
        await modelUp(docker, options);
        started = true;
      } catch (error) {
        say(`could not start it: ${describe(error)}`);
      }
    }
  }
  if (started) {
    await modelDown(docker);
    say('model server stopped');
  }
}
