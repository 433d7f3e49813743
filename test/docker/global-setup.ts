// Once per `vitest --project docker` run: build the project images (cached by inputs hash),
// make the fixture model, start the model server. Torn down at the end, leaving nothing.
import { DockerClient } from '../../src/docker/client.js';
import { buildImages } from '../../src/images/builder.js';
import { ensureFixtureModel } from '../../src/model/fixture.js';
import { modelDown, modelUp } from '../../src/model/server.js';
import { MODEL_NETWORK, findModelServer } from '../../src/model/network.js';

export async function setup(): Promise<void> {
  const docker = new DockerClient();
  await docker.ping();
  const started = Date.now();
  // The same CA policy as `loopbox images build`: NODE_EXTRA_CA_CERTS, as npm and Node use it.
  await buildImages(docker, {
    onLine: (line) => process.stderr.write(`${line}\n`),
  });
  const gguf = await ensureFixtureModel(docker);
  // A model server some other checkout started on this engine (any fixture) serves us too.
  if (!(await findModelServer(docker))) {
    // OpenCode's first prompt is ~30k tokens: each of the 2 slots gets 65536.
    const up = await modelUp(docker, { gguf, ctxSize: 131072, parallel: 2, gpuLayers: 0, gpus: 'none', startTimeoutMs: 60_000 });
    startedModel = !up.reused;
  }
  process.stderr.write(`docker test setup: images, fixture model and model server ready in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
}

let startedModel = false;

/** Stops the model server only if this run started it: another process may be using one. */
export async function teardown(): Promise<void> {
  // LOOPBOX_TEST_KEEP_MODEL=1: several checkouts test on one engine; the first one's teardown
  // must not stop the server the others are still using.
  if (!startedModel || process.env.LOOPBOX_TEST_KEEP_MODEL === '1') return;
  const docker = new DockerClient();
  await modelDown(docker);
  await docker.removeNetwork(MODEL_NETWORK).catch(() => undefined);
}
