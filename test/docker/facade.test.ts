// The Docker facade's errors: a failed API call names the operation, the status and the
// resource, and carries a hint, so the CLI never prints "unexpected error" for it.
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { LoopboxError } from '../../src/common/errors.js';
import { DockerApiError } from '../../src/docker/client.js';
import { resourceLabels } from '../../src/docker/labels.js';
import { ensureNetwork } from '../../src/model/network.js';
import { docker, testRunId } from './helpers.js';

describe('Docker facade errors', () => {
  it('a missing container is a DockerApiError with operation, status 404, container id and a hint', async () => {
    const id = `loopbox-${testRunId('gone')}`;
    const error = (await docker.inspect(id).catch((e: unknown) => e)) as DockerApiError;
    expect(error).toBeInstanceOf(DockerApiError);
    expect(error).toBeInstanceOf(LoopboxError);
    expect(error.operation).toMatch(/^inspecting container /);
    expect(error.statusCode).toBe(404);
    expect(error.containerId).toBe(id);
    expect(error.message).toContain('(HTTP 404)');
    expect(error.hint).toMatch(/gone/);
  });

  it('a container from a missing image names the image and says how to build it', async () => {
    const image = `loopbox/${testRunId('missing')}:none`;
    const error = (await docker.createContainer({ image, cmd: ['true'], labels: resourceLabels({ runId: testRunId('missing'), role: 'test' }) }).catch((e: unknown) => e)) as DockerApiError;
    expect(error).toBeInstanceOf(DockerApiError);
    expect(error.statusCode).toBe(404);
    expect(error.image).toBe(image);
    expect(error.hint).toContain('loopbox images build');
  });

  it('ensureNetwork refuses a network loopbox did not make with a LoopboxError and a hint (not a plain Error)', async () => {
    const runId = testRunId('net');
    const name = `loopbox-test-${runId}`;
    // Not loopbox.managed (that is the point), but labelled so it can be found and removed.
    await execa('docker', ['network', 'create', '--label', `loopbox.test-run=${runId}`, name]);
    try {
      const error = (await ensureNetwork(docker, name, true).catch((e: unknown) => e)) as LoopboxError;
      expect(error).toBeInstanceOf(LoopboxError);
      expect(error.message).toContain('loopbox did not create it');
      expect(error.hint).toContain(`docker network rm ${name}`);
    } finally {
      await execa('docker', ['network', 'rm', name], { reject: false });
    }
    expect((await execa('docker', ['network', 'ls', '-q', '--filter', `label=loopbox.test-run=${runId}`])).stdout).toBe('');
  });
});
