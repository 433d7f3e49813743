// The Compose file must start the same server `loopbox model up` does: same flags, network,
// alias, labels and hardening. A drift here would leave `loopbox run` unable to find it.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { MODEL_CONTAINER, llamaServerArgs } from '../../src/model/server.js';
import { MODEL_HOSTNAME, MODEL_NETWORK } from '../../src/model/network.js';
import { SHARED_RUN_ID } from '../../src/docker/labels.js';

interface Service {
  container_name: string;
  command: string[];
  networks: Record<string, { aliases: string[] }>;
  cap_drop: string[];
  security_opt: string[];
  labels: Record<string, string>;
  deploy?: { resources: { reservations: { devices: Array<{ driver: string; capabilities: string[] }> } } };
}

describe('compose/compose.yaml', () => {
  it('matches the CLI-started model server for both profiles', async () => {
    const text = await readFile(path.join(import.meta.dirname, '..', '..', 'compose', 'compose.yaml'), 'utf8');
    const doc = parse(text, { merge: true }) as { services: Record<string, Service>; networks: Record<string, { name: string; internal: boolean; labels: Record<string, string> }> };
    expect(doc.networks['loopbox-model']).toMatchObject({ name: MODEL_NETWORK, internal: true, labels: { 'loopbox.managed': 'true', 'loopbox.run-id': SHARED_RUN_ID } });
    for (const [name, gpu] of [['model-cpu', false], ['model-gpu', true]] as const) {
      const svc = doc.services[name]!;
      expect(svc.container_name).toBe(MODEL_CONTAINER);
      expect(svc.networks[MODEL_NETWORK]?.aliases).toEqual([MODEL_HOSTNAME]);
      expect(svc.cap_drop).toEqual(['ALL']);
      expect(svc.labels).toMatchObject({ 'loopbox.role': 'model', 'loopbox.run-id': SHARED_RUN_ID });
      const cli = llamaServerArgs({ ctxSize: 65536, parallel: 1, gpuLayers: 99 }, '/models/${MODEL_FILE:?set MODEL_FILE to the GGUF file name}', gpu);
      const compose = svc.command.map((a) => a.replace('${CTX_SIZE:-65536}', '65536').replace('${PARALLEL:-1}', '1').replace('${GPU_LAYERS:-99}', '99'));
      expect(compose).toEqual(cli);
      if (gpu) expect(svc.deploy?.resources.reservations.devices[0]).toMatchObject({ driver: 'nvidia', capabilities: ['gpu'] });
    }
  });
});
