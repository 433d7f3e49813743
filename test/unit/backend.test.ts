import { describe, expect, it } from 'vitest';
import type { SandboxHandle } from '../../src/backend/backend.js';
import { DockerBackend } from '../../src/backend/docker.js';
import { LoopboxError } from '../../src/common/errors.js';
import { DockerClient } from '../../src/docker/client.js';

describe('DockerBackend', () => {
  // A loop uses one backend: an agent must never land in a namespace another backend made
  // (it would run without the sentry's firewall that this backend checked).
  it('refuses a sandbox handle it did not start', async () => {
    const backend = new DockerBackend(new DockerClient());
    const foreign: SandboxHandle = { id: 'pod-1', modelIp: undefined, modelReachable: false, stop: () => Promise.resolve() };
    await expect(backend.runAgent(foreign, { runId: 'r', cmd: ['true'], limits: { memoryBytes: 1, cpus: 1, pids: 1 } })).rejects.toThrow(LoopboxError);
    await expect(backend.collectAudit(foreign, { runId: 'r' })).rejects.toThrow(/not started by the Docker backend/);
  });
});
