// The container backend on this host's Docker engine: the sentry and agents of sandbox/, the
// verify container of verify/, removal by run label (runs/gc.ts).
import type { SandboxIdentity } from '../audit/record.js';
import { LoopboxError } from '../common/errors.js';
import type { DockerClient } from '../docker/client.js';
import { type ModelEndpoint, findModelServer } from '../model/network.js';
import { ModelSupervisor } from '../model/supervisor.js';
import { removeRunContainers } from '../runs/gc.js';
import { type AgentOptions, type AgentRun, type CollectResult, Sentry, type SentryOptions, checkDeadlineTools, runAgent } from '../sandbox/sandbox.js';
import { type VerifyOptions, type VerifyResult, runVerify } from '../verify/verify.js';
import type { ContainerBackend, SandboxHandle } from './backend.js';

export class DockerBackend implements ContainerBackend {
  constructor(readonly docker: DockerClient) {}

  async ping(): Promise<void> {
    await this.docker.ping();
  }

  async startSentry(options: SentryOptions): Promise<SandboxHandle> {
    return Sentry.start(this.docker, options);
  }

  async runAgent(sandbox: SandboxHandle, options: AgentOptions): Promise<AgentRun> {
    return runAgent(this.docker, dockerSentry(sandbox), options);
  }

  async collectAudit(sandbox: SandboxHandle, identity: SandboxIdentity): Promise<CollectResult> {
    return dockerSentry(sandbox).collect(identity);
  }

  async runVerify(options: VerifyOptions): Promise<VerifyResult> {
    return runVerify(this.docker, options);
  }

  async removeRun(runId: string): Promise<void> {
    return removeRunContainers(this.docker, runId);
  }

  async findModel(): Promise<ModelEndpoint | undefined> {
    return findModelServer(this.docker);
  }

  async checkImage(image: string): Promise<void> {
    return checkDeadlineTools(this.docker, image);
  }

  modelSupervisor(options: { startTimeoutMs?: number } = {}): ModelSupervisor {
    return new ModelSupervisor(this.docker, options);
  }
}

function dockerSentry(sandbox: SandboxHandle): Sentry {
  if (sandbox instanceof Sentry) return sandbox;
  throw new LoopboxError(`Sandbox ${sandbox.id} was not started by the Docker backend.`, { hint: 'A loop uses one backend for all its containers.' });
}
