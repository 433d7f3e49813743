// model.endpoint: an OpenAI-compatible server loopbox did not start (here a second real
// llama-server on a network the test made). The sandbox reaches exactly its ip:port through
// the sentry, by the name in the URL, and nothing else.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resourceLabels } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import { createExampleRepo } from '../../src/demo/example-repo.js';
import { ensureFixtureModel } from '../../src/model/fixture.js';
import { EGRESS_NETWORK, ensureNetwork } from '../../src/model/network.js';
import { llamaServerArgs, waitHealthy } from '../../src/model/server.js';
import type { RunRecord } from '../../src/runs/registry.js';
import { beginTestRun, cli, docker, endTestRun, parseJsonLines, testRunId } from './helpers.js';

describe('model.endpoint (real Docker, a second real llama-server)', () => {
  const runId = testRunId('ext');
  let record: RunRecord;
  let ip: string;
  const dirs: string[] = [];

  beforeAll(async () => {
    record = await beginTestRun(runId);
    const labels = resourceLabels({ runId, role: 'test' });
    const network = `lbx-${runId}-ext`;
    await docker.createNetwork({ name: network, internal: false, labels, subnet: '10.214.7.0/24' });
    const gguf = await ensureFixtureModel(docker);
    const id = await docker.createContainer({
      name: `lbx-${runId}-llama`,
      image: imageRef('llama-cpu'),
      cmd: llamaServerArgs({ ctxSize: 8192, parallel: 1, gpuLayers: 0 }, '/models/m.gguf', false),
      labels,
      networkMode: network,
      binds: [{ host: gguf, container: '/models/m.gguf', readOnly: true }],
      capDrop: ['ALL'],
    });
    // Docker isolates bridge networks from each other, so a server on another bridge would be
    // unreachable; one on the egress bridge stands for a GPU box on the LAN.
    await ensureNetwork(docker, EGRESS_NETWORK, false);
    await docker.connectNetwork(EGRESS_NETWORK, id);
    await docker.start(id);
    await waitHealthy(docker, id, imageRef('llama-cpu'), 60_000);
    ip = (await docker.inspect(id)).NetworkSettings.Networks[EGRESS_NETWORK]!.IPAddress;
  });

  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
    await endTestRun(record);
    const egress = await docker.findNetwork(EGRESS_NETWORK);
    if (egress && Object.keys(egress.Containers ?? {}).length === 0) await docker.removeNetwork(EGRESS_NETWORK);
  });

  it('a loop talks to the configured endpoint through the sentry and ends done', async () => {
    const repo = await mkdtemp(path.join(tmpdir(), 'lbx-ext-'));
    dirs.push(repo, `${repo}.yaml`);
    await createExampleRepo(repo);
    await writeFile(
      `${repo}.yaml`,
      stringify({
        model: { endpoint: `http://${ip}:8080/v1` },
        agent: { type: 'command', command: ['node', 'tools/scripted-agent.mjs'], timeout: '60s' },
        verify: { command: ['node', 'test/calc.test.js'] },
        protectedPaths: ['test/**', 'tools/**'],
        loop: { maxIterations: 3 },
      }),
    );
    const res = await cli(['--config', `${repo}.yaml`, 'run', '--repo', repo, '--json', path.join(repo, 'tasks', 'fix-add.md')]);
    expect(res.exitCode, res.all).toBe(0);
    const end = parseJsonLines<{ type: string; summary?: { endState: string; runId: string } }>(res.stdout).find((e) => e.type === 'loop-end')?.summary;
    expect(end?.endState).toBe('done');
    const log = await import('node:fs/promises').then((fs) => fs.readFile(path.join(process.env.LOOPBOX_STATE_DIR!, 'runs', end!.runId, 'sandboxes', 'i1.agent.log'), 'utf8'));
    expect(log).toMatch(/model answered HTTP 200/);
    // Its answers were allowed traffic, counted, not logged as blocked.
    const audit = (await cli(['audit', '--run', end!.runId, '--json'])).stdout.trim();
    expect(audit).toBe('');
  });
});
