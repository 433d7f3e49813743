// Before any job starts: a swarm, labelled nodes, the runner image (and the work folder) on
// every one of them, and the per-node slot rule. Bad input is refused here; nothing is started
// except the probe below, which is removed again.
import { LoopboxError } from '../common/errors.js';
import type { ClusterConfig } from '../config/cluster.js';
import type { DockerClient, SwarmNode, SwarmState } from '../docker/client.js';
import { resourceLabels } from '../docker/labels.js';
import { imageRef } from '../images/catalog.js';
import { newRunId } from '../common/ids.js';
import { removeJob } from './status.js';
import { DOCKER_SOCKET, NODE_LABEL, NODE_LABEL_VALUE, PLACEMENT, SLOT_RESOURCE } from './spec.js';

export interface Preflight {
  swarm: SwarmState;
  nodes: SwarmNode[];
  /** `loopbox/runner:<tag>` as configured, and the image id every node runs. */
  imageRef: string;
  imageId: string;
  /** Every labelled node declares loopbox-slot: each job reserves one. */
  slotResource: boolean;
}

export async function checkSwarm(docker: DockerClient): Promise<SwarmState> {
  const swarm = await docker.swarmState();
  if (swarm.state !== 'active') {
    throw new LoopboxError(`This Docker engine is not part of a swarm (swarm state: ${swarm.state}).`, {
      hint: `Make one with \`docker swarm init --advertise-addr <this machine's address>\` (or join one), then label the nodes that run loops: docker node update --label-add ${NODE_LABEL}=${NODE_LABEL_VALUE} <node>.`,
    });
  }
  if (!swarm.isManager) {
    throw new LoopboxError('This Docker engine is a swarm worker: jobs are created on a manager.', { hint: 'Run loopbox on a manager node (docker node ls shows them), or point DOCKER_HOST at one.' });
  }
  return swarm;
}

export async function labelledNodes(docker: DockerClient): Promise<SwarmNode[]> {
  const all = await docker.listNodes();
  const nodes = all.filter((n) => n.labels[NODE_LABEL] === NODE_LABEL_VALUE && n.state === 'ready' && n.availability === 'active');
  if (!nodes.length) {
    const seen = all.map((n) => `${n.hostname} (${n.state}, ${n.availability}, ${NODE_LABEL}=${n.labels[NODE_LABEL] ?? 'unset'})`).join(', ');
    throw new LoopboxError(`No swarm node is labelled ${NODE_LABEL}=${NODE_LABEL_VALUE} and ready: ${seen || 'no nodes'}.`, {
      hint: `Label each node that holds the runner image, the model and ${'cluster.workDir'}: docker node update --label-add ${NODE_LABEL}=${NODE_LABEL_VALUE} <node>.`,
    });
  }
  return nodes;
}

export async function preflight(docker: DockerClient, cluster: ClusterConfig, options: { probeTimeoutMs?: number } = {}): Promise<Preflight> {
  const swarm = await checkSwarm(docker);
  const nodes = await labelledNodes(docker);
  const ref = cluster.image ?? imageRef('runner');
  const local = await docker.findImage(ref);
  if (!local) {
    throw new LoopboxError(`The runner image ${ref} is not on this machine.`, { hint: 'Build it with `loopbox images build --only runner` (after `npm run build`), then copy it to every labelled node: docker save IMAGE | ssh NODE docker load.' });
  }
  const withSlots = nodes.filter((n) => (n.genericResources[SLOT_RESOURCE] ?? 0) > 0);
  if (withSlots.length && withSlots.length < nodes.length) {
    const without = nodes.filter((n) => !withSlots.includes(n)).map((n) => n.hostname);
    throw new LoopboxError(`Some labelled nodes declare the ${SLOT_RESOURCE} resource and some do not (${without.join(', ')}): jobs would never be placed on the latter.`, {
      hint: `Give every labelled node "node-generic-resources": ["${SLOT_RESOURCE}=<model slots>"] in its daemon.json, or none of them.`,
    });
  }
  await probeNodes(docker, local.id, cluster.workDir, nodes, options.probeTimeoutMs ?? 90_000);
  return { swarm, nodes, imageRef: ref, imageId: local.id, slotResource: withSlots.length === nodes.length };
}

/**
 * A global job on every labelled node, with the runner image pinned by id and the same mounts a
 * loop gets: a node without the image, the socket or the work folder fails it, and is named.
 */
async function probeNodes(docker: DockerClient, imageId: string, workDir: string, nodes: SwarmNode[], timeoutMs: number): Promise<void> {
  const runId = `probe-${newRunId().slice(-6)}`;
  const labels = resourceLabels({ runId, role: 'runner' });
  const id = await docker.createService({
    Name: `loopbox-${runId}`,
    Labels: labels,
    TaskTemplate: {
      ContainerSpec: {
        Image: imageId,
        Labels: labels,
        Args: ['--version'],
        Mounts: [
          { Type: 'bind', Source: DOCKER_SOCKET, Target: DOCKER_SOCKET, ReadOnly: true },
          { Type: 'bind', Source: workDir, Target: workDir, ReadOnly: true },
        ],
      },
      Placement: { Constraints: [PLACEMENT] },
      RestartPolicy: { Condition: 'none', MaxAttempts: 0 },
    },
    Mode: { GlobalJob: {} },
  });
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const tasks = await docker.listTasks(id);
      const byNode = new Map(tasks.map((t) => [t.nodeId, t]));
      const bad = nodes.flatMap((n) => {
        const t = byNode.get(n.id);
        return t && ['failed', 'rejected'].includes(t.state) ? [`${n.hostname}: ${t.error || t.message}`] : [];
      });
      if (bad.length) {
        throw new LoopboxError(`The runner cannot start on ${bad.length} labelled node(s): ${bad.join('; ')}`, {
          hint: /No such image|image/i.test(bad.join(' '))
            ? `Copy the runner image to each of them (docker save ${imageId.slice(7, 19)} | ssh NODE docker load): jobs run it by image id, never from a registry.`
            : `Each labelled node needs ${DOCKER_SOCKET} and the folder ${workDir} (cluster.workDir): mkdir -p ${workDir} on it.`,
        });
      }
      if (nodes.every((n) => byNode.get(n.id)?.state === 'complete')) return;
      if (Date.now() > deadline) {
        const pending = nodes.filter((n) => byNode.get(n.id)?.state !== 'complete').map((n) => `${n.hostname} (${byNode.get(n.id)?.state ?? 'no task'})`);
        throw new LoopboxError(`The runner probe did not finish in ${timeoutMs / 1000} s on: ${pending.join(', ')}.`, { hint: 'Check `docker node ls` and the nodes\' engines.' });
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    await removeJob(docker, id, runId);
  }
}
