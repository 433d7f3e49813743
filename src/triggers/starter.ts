// The one thing the triggers (`loopbox schedule`, `loopbox serve`) need from the loop runner.
// They talk to this interface, never to runLoop or Docker, so their tests need neither.

export interface StartRequest {
  taskFile: string;
  /** Goes into the run record, e.g. "schedule:0 2 * * *", "webhook:github:workflow_run:<delivery>", "webhook:trigger:<delivery>". */
  trigger: string;
}

export type StartResult =
  | { started: true; runId: string }
  | { started: false; reason: 'busy' | 'queue-full' | 'unknown-task'; detail: string };

export interface LoopStarter {
  /**
   * Queues/starts a loop for the task; 'busy' if a loop for the same task is running or queued.
   * It should return as soon as the loop is queued: a webhook caller waits for the answer
   * (GitHub gives up after 10 seconds).
   */
  start(request: StartRequest): Promise<StartResult>;
}

/** A structured log line; the CLI maps it to pino. Never carries secrets or signatures. */
export type TriggerEvent = { event: string } & Record<string, unknown>;
export type TriggerLog = (event: TriggerEvent) => void;
