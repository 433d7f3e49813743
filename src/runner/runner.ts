// Many loops at once over one model server: a pool of `concurrency` loops, and a semaphore
// that lets at most one agent per model slot run, so no loop's requests are starved into
// timeouts. Loops beyond the pool queue (visible in `loopbox status`). One loop failing,
// hanging or being stopped never affects the others.
import { existsSync } from 'node:fs';
import { LoopboxError, describe as describeError } from '../common/errors.js';
import { newRunId } from '../common/ids.js';
import { Semaphore } from '../common/semaphore.js';
import type { Config } from '../config/schema.js';
import type { DockerClient } from '../docker/client.js';
import { type LoopEvent, type LoopSummary, runLoop } from '../loop/loop.js';
import { modelStatus } from '../model/server.js';
import { ModelSupervisor } from '../model/supervisor.js';
import { createRun, finishRun, readRun } from '../runs/registry.js';
import { taskBranch } from '../git/index.js';
import { taskNameOf } from '../loop/task.js';
import type { LoopStarter, StartRequest, StartResult } from '../triggers/starter.js';
import { END_STATE_EXIT } from '../loop/brakes.js';
import { runDir } from '../common/paths.js';
import { packageVersion } from '../common/version.js';
import { NightBatch, checkDeliveryConfig, deliverRun, deliveryConfigured, runFacts, sendNotification } from '../deliver/deliver.js';

export interface RunnerOptions {
  repo: string;
  config: Config;
  /** Loops at once; default: the model's slots. */
  concurrency?: number | undefined;
  allowDirty?: boolean;
  signal?: AbortSignal;
  onEvent?: (event: LoopEvent) => void;
  stateEnv?: NodeJS.ProcessEnv;
  /** Loops queued or running at most, for triggers (`queue-full` beyond). */
  maxQueued?: number;
}

export interface QueuedLoop {
  runId: string;
  taskFile: string;
  task: string;
  trigger: string;
  done: Promise<LoopSummary>;
}

/** How many agents the model can serve at once: its `/slots`, else the configured `--parallel`. */
export async function modelSlots(docker: DockerClient, config: Config): Promise<number> {
  if (config.model.endpoint) return config.model.parallel;
  const status = await modelStatus(docker).catch(() => undefined);
  return status?.slots?.total && status.slots.total > 0 ? status.slots.total : config.model.parallel;
}

export class LoopRunner implements LoopStarter {
  private readonly pool: Semaphore;
  private readonly agentSlots: Semaphore;
  private readonly supervisor: ModelSupervisor;
  private readonly active = new Map<string, QueuedLoop>();
  /** Tasks between the busy check and `active` (enqueue awaits): two triggers at once start one loop. */
  private readonly pending = new Set<string>();
  /** Scheduled loops of the current night: one notification when the last of them ends. */
  private readonly night = new NightBatch((runs) => sendNotification('schedule-night', runs, { config: this.options.config, version: packageVersion(), stateEnv: this.options.stateEnv, signal: this.options.signal }));
  /** Loops past the pool (the rest of `active` waits for it). */
  private readonly running = new Set<string>();

  private constructor(
    private readonly docker: DockerClient,
    private readonly options: RunnerOptions,
    slots: number,
  ) {
    this.pool = new Semaphore(options.concurrency ?? slots);
    this.agentSlots = new Semaphore(slots);
    this.supervisor = new ModelSupervisor(docker, { startTimeoutMs: options.config.model.startTimeout });
  }

  static async create(docker: DockerClient, options: RunnerOptions): Promise<LoopRunner> {
    await checkDeliveryConfig(options.config);
    return new LoopRunner(docker, options, await modelSlots(docker, options.config));
  }

  get slots(): number {
    return this.agentSlots.permits;
  }

  get concurrency(): number {
    return this.pool.permits;
  }

  /** Is a loop for this task queued or running? */
  busy(task: string): boolean {
    return this.pending.has(task) || [...this.active.values()].some((l) => l.task === task);
  }

  /** For triggers (cron, webhooks): one loop per task at a time, a bounded queue. */
  async start(request: StartRequest): Promise<StartResult> {
    const task = taskNameOf(request.taskFile);
    if (this.busy(task)) return { started: false, reason: 'busy', detail: `a loop for ${task} is running or queued` };
    if (this.active.size >= (this.options.maxQueued ?? 64)) return { started: false, reason: 'queue-full', detail: `${this.active.size} loops running or queued` };
    if (!existsSync(request.taskFile)) return { started: false, reason: 'unknown-task', detail: `no task file ${request.taskFile}` };
    this.pending.add(task);
    try {
      const queued = await this.enqueue(request.taskFile, request.trigger);
      return { started: true, runId: queued.runId };
    } finally {
      this.pending.delete(task);
    }
  }

  /** Loops of this runner now: past the concurrency pool, and waiting for it. */
  counts(): { running: number; queued: number } {
    return { running: this.running.size, queued: Math.max(0, this.active.size - this.running.size) };
  }

  /** Resolves when every queued and running loop has ended. */
  async idle(): Promise<void> {
    await Promise.all([...this.active.values()].map((l) => l.done.catch(() => undefined)));
  }

  /** Queues a loop; it starts when the pool has room. The run record exists from now on. */
  async enqueue(taskFile: string, trigger = 'manual'): Promise<QueuedLoop> {
    const runId = newRunId();
    const task = taskNameOf(taskFile);
    const queuedRecord = await createRun({ runId, kind: 'loop', task, trigger, queued: true }, this.options.stateEnv);
    const done = this.runQueued(runId, taskFile, trigger);
    const entry: QueuedLoop = { runId, taskFile, task, trigger, done };
    this.active.set(runId, entry);
    void done
      .catch(async () => {
        // A loop that failed before it started must not stay "queued" in `loopbox status`.
        const now = await readRun(runId, this.options.stateEnv);
        if (now?.queued) await finishRun(queuedRecord, this.options.stateEnv);
      })
      .finally(() => this.active.delete(runId));
    return entry;
  }

  private async runQueued(runId: string, taskFile: string, trigger: string): Promise<LoopSummary> {
    const scheduled = trigger.startsWith('schedule:');
    if (scheduled) this.night.begin();
    let summary: LoopSummary;
    try {
      summary = await this.runPooled(runId, taskFile, trigger);
    } catch (error) {
      // A loop that threw still ends the night honestly: its error is in the notification.
      await this.afterLoop(errorSummary({ runId, task: taskNameOf(taskFile) }, error, this.options.signal?.aborted ?? false, this.options.stateEnv), scheduled);
      throw error;
    }
    await this.afterLoop(summary, scheduled);
    return summary;
  }

  /**
   * After a loop ended (state saved, lock released): push, pull request, notify (src/deliver/).
   * A scheduled loop's notification waits for the last loop of its night. Never throws.
   */
  private async afterLoop(summary: LoopSummary, scheduled: boolean): Promise<void> {
    const { config } = this.options;
    let facts = null;
    try {
      if (deliveryConfigured(config)) {
        const onNotice = (message: string): void => this.options.onEvent?.({ type: 'notice', runId: summary.runId, task: summary.task, message });
        const delivery = await deliverRun(summary, { repo: this.options.repo, config, version: packageVersion(), stateEnv: this.options.stateEnv, notify: !scheduled, onNotice, signal: this.options.signal });
        if (scheduled && config.notify) facts = await runFacts(summary, delivery).catch(() => null);
      }
    } finally {
      if (scheduled) await this.night.end(facts);
    }
  }

  private async runPooled(runId: string, taskFile: string, trigger: string): Promise<LoopSummary> {
    const release = await this.pool.acquire(this.options.signal);
    this.running.add(runId);
    try {
      return await runLoop(this.docker, {
        repo: this.options.repo,
        taskFile,
        config: this.options.config,
        runId,
        allowDirty: this.options.allowDirty ?? false,
        trigger,
        signal: this.options.signal,
        onEvent: this.options.onEvent,
        stateEnv: this.options.stateEnv,
        agentSlots: this.agentSlots,
        modelSupervisor: this.supervisor,
      });
    } finally {
      this.running.delete(runId);
      release();
    }
  }

  /** Runs one loop per task file and waits for all; a loop that throws ends as `error`. */
  async runAll(taskFiles: string[], trigger = 'manual'): Promise<LoopSummary[]> {
    const queued = [];
    for (const file of taskFiles) queued.push(await this.enqueue(file, trigger));
    return Promise.all(queued.map((q) => q.done.catch((error: unknown) => errorSummary(q, error, this.options.signal?.aborted ?? false, this.options.stateEnv))));
  }
}

function errorSummary(q: Pick<QueuedLoop, 'runId' | 'task'>, error: unknown, aborted: boolean, env?: NodeJS.ProcessEnv): LoopSummary {
  const endState = aborted ? 'aborted' : 'error';
  return {
    runId: q.runId,
    task: q.task,
    endState,
    reason: aborted ? 'stopped before it started' : (describeError(error).split('\n')[0] ?? 'error'),
    // Refused before it started (another loop drives the task, bad input): the error's own code.
    exitCode: !aborted && error instanceof LoopboxError && error.exitCode === 2 ? 2 : END_STATE_EXIT[endState],
    evidence: '-',
    iterations: 0,
    wallMs: 0,
    tokens: 0,
    blocked: 0,
    branch: taskBranch(q.task),
    worktree: '',
    lastCommit: null,
    verifiedCommit: null,
    runDir: runDir(q.runId, env),
  };
}
