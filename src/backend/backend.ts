// Where a loop's containers run. The loop asks this interface to start a run's sentry, run an
// agent in its network namespace, collect the audit records that agent caused, run a verify,
// and remove what a run left; it never starts a container itself. DockerBackend (docker.ts),
// on the Docker engine of this host, is the first implementation; docs/scaling.md designs one
// for a cluster (a pod per run).
import type { SandboxIdentity } from '../audit/record.js';
import type { ModelEndpoint } from '../model/network.js';
import type { ModelSupervisor } from '../model/supervisor.js';
import type { AgentOptions, AgentRun, CollectResult, SentryOptions } from '../sandbox/sandbox.js';
import type { VerifyOptions, VerifyResult } from '../verify/verify.js';

/** A started sentry: the network namespace (firewall, DNS responder, packet log) a run's agents share. */
export interface SandboxHandle {
  readonly id: string;
  /** The model server's address the firewall lets through; undefined when no managed model runs. */
  readonly modelIp: string | undefined;
  readonly modelReachable: boolean;
  /** Idempotent: flushes the sentry's logs, ingests the rest, signs a checkpoint, removes it. */
  stop(): Promise<void>;
}

export interface ContainerBackend {
  /** Starts a sentry and waits until its firewall, DNS and logger are up. */
  startSentry(options: SentryOptions): Promise<SandboxHandle>;
  /** Runs one agent in the sentry's namespace to its end (exit, deadline, or abort) and removes it. */
  runAgent(sandbox: SandboxHandle, options: AgentOptions): Promise<AgentRun>;
  /** The audit records (and model usage) written since the last collect, attributed to `identity`, appended to the run's logs. */
  collectAudit(sandbox: SandboxHandle, identity: SandboxIdentity): Promise<CollectResult>;
  /** Runs the verify command on a tree in a clean container with no network. */
  runVerify(options: VerifyOptions): Promise<VerifyResult>;
  /** Removes every container the run left (its sentry, agent, verify), alive or not. */
  removeRun(runId: string): Promise<void>;
  /** The managed model server where it runs now; undefined when none is running. */
  findModel(): Promise<ModelEndpoint | undefined>;
  /**
   * Refuses (a clear error) an agent or verify image that lacks what the container's own
   * deadline needs, before anything of a run starts.
   */
  checkImage(image: string): Promise<void>;
  /** Resolves when the engine answers now (the loop's wait after an engine loss polls it). */
  ping(): Promise<void>;
  /** Restarts a managed model server that died (once); undefined where the backend cannot. */
  modelSupervisor?(options?: { startTimeoutMs?: number }): ModelSupervisor;
}
