// `loopbox schedule`: starts loops on cron ticks. A tick whose task is still running (the
// starter says busy) is skipped and logged, never queued behind it: the next tick tries again.
import { Cron } from 'croner';
import { ConfigError, describe } from '../common/errors.js';
import { cronProblem } from '../config/triggers.js';
import { taskNameOf } from '../loop/task.js';
import type { LoopStarter, TriggerLog } from './starter.js';

/** The most stop() waits for starts in progress. */
export const STOP_GRACE_MS = 10_000;

export interface CronEntry {
  cron: string;
  /** Task file path. */
  task: string;
  timezone?: string | undefined;
}

export interface SchedulerOptions {
  entries: readonly CronEntry[];
  starter: LoopStarter;
  log: TriggerLog;
  /** Clock for nextRuns() (tests); ticks follow the real (or faked) timers. */
  now?: () => Date;
}

export interface NextRun {
  task: string;
  cron: string;
  next: Date;
}

export interface Scheduler {
  /** Stops ticking and waits (at most STOP_GRACE_MS) for starts already asked for; idempotent. */
  stop(): Promise<void>;
  /** The next tick of each entry, soonest first. */
  nextRuns(): NextRun[];
}

/** The trigger string recorded in the run: `schedule:<cron>`. */
export function scheduleTrigger(cron: string): string {
  return `schedule:${cron.trim()}`;
}

export function startScheduler(options: SchedulerOptions): Scheduler {
  const { entries, starter, log } = options;
  const now = options.now ?? (() => new Date());
  const issues = entries.flatMap((entry, index) => {
    const problem = cronProblem(entry.cron, entry.timezone);
    return problem ? [`schedule[${index}] (${entry.task}): ${problem}`] : [];
  });
  if (issues.length) {
    throw new ConfigError(`schedule has ${issues.length} invalid entr${issues.length > 1 ? 'ies' : 'y'}:`, issues, {
      hint: 'Cron takes five fields (minute hour day-of-month month day-of-week), or six with seconds first; see docs/triggers.md.',
    });
  }

  const pending = new Set<Promise<void>>();
  const jobs = entries.map((entry) => {
    const cron = entry.cron.trim();
    const task = taskNameOf(entry.task);
    const trigger = scheduleTrigger(cron);
    const tick = async (): Promise<void> => {
      try {
        const result = await starter.start({ taskFile: entry.task, trigger });
        if (result.started) log({ event: 'schedule-started', task, cron, runId: result.runId });
        else log({ event: 'schedule-skipped', task, cron, reason: result.reason, detail: result.detail });
      } catch (error) {
        log({ event: 'schedule-error', task, cron, error: describe(error) });
      }
    };
    return {
      entry,
      job: new Cron(
        cron,
        {
          mode: '5-or-6-parts',
          ...(entry.timezone === undefined ? {} : { timezone: entry.timezone }),
          // A start still waiting on the runner when the next tick comes: skip, don't pile up.
          protect: () => log({ event: 'schedule-skipped', task, cron, reason: 'overrun', detail: 'the previous tick is still waiting for the loop runner' }),
          catch: (error: unknown) => log({ event: 'schedule-error', task, cron, error: describe(error) }),
        },
        () => {
          const done = tick();
          pending.add(done);
          return done.finally(() => pending.delete(done));
        },
      ),
    };
  });

  let stopped: Promise<void> | undefined;
  return {
    stop() {
      stopped ??= (async () => {
        for (const { job } of jobs) job.stop();
        // Wait for starts already asked for, but not forever on a stuck runner.
        let timer: NodeJS.Timeout | undefined;
        const cap = new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_GRACE_MS)));
        await Promise.race([Promise.allSettled([...pending]), cap]);
        clearTimeout(timer);
      })();
      return stopped;
    },
    nextRuns() {
      const at = now();
      return jobs
        .flatMap(({ entry, job }) => {
          const next = job.nextRun(at);
          return next ? [{ task: taskNameOf(entry.task), cron: entry.cron.trim(), next }] : [];
        })
        .sort((a, b) => a.next.getTime() - b.next.getTime());
    },
  };
}
