// Keeps the shared model server alive for the loops using it: when it dies mid-run, loops
// pause (the iteration is not held against the agent), it is restarted once (per 30 minutes),
// and they go on; if it stays down, every loop ends in a clear `error`.
import { LoopboxError } from '../common/errors.js';
import type { DockerClient } from '../docker/client.js';
import { findModelServer, type ModelEndpoint } from './network.js';
import { MODEL_CONTAINER, waitHealthy } from './server.js';

/** A restart older than this no longer counts: a server that runs for hours may die again. */
const RESTART_WINDOW_MS = 30 * 60_000;

export class ModelSupervisor {
  private restarts = 0;
  private lastRestart = 0;
  private recovering: Promise<ModelEndpoint> | undefined;

  constructor(
    private readonly docker: DockerClient,
    private readonly options: { maxRestarts?: number; startTimeoutMs?: number; onEvent?: (event: { type: 'model-down' | 'model-restarted' | 'model-lost'; detail: string }) => void } = {},
  ) {}

  get restartCount(): number {
    return this.restarts;
  }

  /** The running server, restarting it (once per supervisor, shared by all loops) if it died. */
  async ensureUp(): Promise<ModelEndpoint> {
    const running = await findModelServer(this.docker);
    if (running) return running;
    this.recovering ??= this.recover().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async recover(): Promise<ModelEndpoint> {
    const max = this.options.maxRestarts ?? 1;
    if (this.restarts > 0 && Date.now() - this.lastRestart > RESTART_WINDOW_MS) this.restarts = 0;
    const existing = await this.docker.inspect(MODEL_CONTAINER).catch(() => undefined);
    const detail = existing ? `exit code ${existing.State.ExitCode}${existing.State.OOMKilled ? ' (out of memory)' : ''}` : 'container gone';
    this.options.onEvent?.({ type: 'model-down', detail });
    if (!existing || this.restarts >= max) {
      this.options.onEvent?.({ type: 'model-lost', detail });
      throw new LoopboxError(`The model server is down (${detail}) and ${existing ? `was already restarted ${this.restarts} time(s)` : 'cannot be restarted'}.`, {
        hint: 'See `loopbox model logs`; start it again with `loopbox model up`, then `loopbox run --resume RUN`.',
      });
    }
    this.restarts += 1;
    this.lastRestart = Date.now();
    await this.docker.start(existing.Id);
    await waitHealthy(this.docker, existing.Id, existing.Config.Image, this.options.startTimeoutMs ?? 120_000);
    const endpoint = await findModelServer(this.docker);
    if (!endpoint) throw new LoopboxError('The model server restarted but has no address on the model network.');
    this.options.onEvent?.({ type: 'model-restarted', detail: `at ${endpoint.ip}` });
    return endpoint;
  }
}
