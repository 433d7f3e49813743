import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { STOP_GRACE_MS, startScheduler, type Scheduler } from '../../src/triggers/cron.js';
import type { LoopStarter, StartRequest, StartResult, TriggerEvent } from '../../src/triggers/starter.js';

/** A starter that records requests and answers what `answer` says (busy or started). */
function fakeStarter(answer: (request: StartRequest) => StartResult | Promise<StartResult>): LoopStarter & { requests: StartRequest[] } {
  const requests: StartRequest[] = [];
  return {
    requests,
    start(request) {
      requests.push(request);
      return Promise.resolve(answer(request));
    },
  };
}

describe('startScheduler', () => {
  let scheduler: Scheduler | undefined;
  let events: TriggerEvent[];
  const log = (event: TriggerEvent): void => void events.push(event);

  beforeEach(() => {
    events = [];
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-03-01T10:00:00.500Z'));
  });
  afterEach(async () => {
    await scheduler?.stop();
    scheduler = undefined;
    vi.useRealTimers();
  });

  it('starts the task on a tick with trigger schedule:<cron>', async () => {
    let n = 0;
    const starter = fakeStarter(() => ({ started: true, runId: `run-${++n}` }));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/Nightly.md' }], starter, log });
    expect(starter.requests).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(starter.requests).toEqual([{ taskFile: 'tasks/Nightly.md', trigger: 'schedule:* * * * * *' }]);
    expect(events).toContainEqual({ event: 'schedule-started', task: 'nightly', cron: '* * * * * *', runId: 'run-1' });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(starter.requests).toHaveLength(3);
  });

  it('skips and logs ticks while the task is still running (busy)', async () => {
    let busy = true;
    const starter = fakeStarter(() => (busy ? { started: false, reason: 'busy', detail: 'run r1 is running' } : { started: true, runId: 'r2' }));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/fix.md' }], starter, log });
    await vi.advanceTimersByTimeAsync(3_000);
    const skipped = events.filter((e) => e.event === 'schedule-skipped');
    expect(skipped).toHaveLength(3);
    expect(skipped[0]).toEqual({ event: 'schedule-skipped', task: 'fix', cron: '* * * * * *', reason: 'busy', detail: 'run r1 is running' });
    expect(events.some((e) => e.event === 'schedule-started')).toBe(false);
    busy = false;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(events.at(-1)).toMatchObject({ event: 'schedule-started', runId: 'r2' });
  });

  it('skips a tick while the previous start is still waiting on the runner (overrun)', async () => {
    let release: (result: StartResult) => void = () => undefined;
    const starter = fakeStarter(() => new Promise<StartResult>((resolve) => (release = resolve)));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/slow.md' }], starter, log });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(starter.requests).toHaveLength(1);
    expect(events).toContainEqual(expect.objectContaining({ event: 'schedule-skipped', reason: 'overrun' }));
    release({ started: true, runId: 'r1' });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(starter.requests).toHaveLength(2);
    release({ started: true, runId: 'r2' });
  });

  it('logs a starter that throws and keeps ticking', async () => {
    const starter = fakeStarter(() => Promise.reject(new Error('registry locked')));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/a.md' }], starter, log });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(events.filter((e) => e.event === 'schedule-error')).toEqual([
      { event: 'schedule-error', task: 'a', cron: '* * * * * *', error: 'registry locked' },
      { event: 'schedule-error', task: 'a', cron: '* * * * * *', error: 'registry locked' },
    ]);
  });

  it('stop() gives up waiting on a stuck start after STOP_GRACE_MS', async () => {
    const starter = fakeStarter(() => new Promise<StartResult>(() => undefined));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/stuck.md' }], starter, log });
    await vi.advanceTimersByTimeAsync(1_000);
    let stopped = false;
    const stopping = scheduler.stop().then(() => (stopped = true));
    await vi.advanceTimersByTimeAsync(STOP_GRACE_MS - 1);
    expect(stopped).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await stopping;
    expect(stopped).toBe(true);
  });

  it('stop() stops ticking and is idempotent', async () => {
    const starter = fakeStarter(() => ({ started: true, runId: 'r' }));
    scheduler = startScheduler({ entries: [{ cron: '* * * * * *', task: 'tasks/a.md' }], starter, log });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(starter.requests).toHaveLength(1);
    await Promise.all([scheduler.stop(), scheduler.stop()]);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(starter.requests).toHaveLength(1);
  });

  it('nextRuns() lists the next tick of each entry, soonest first, in its timezone', () => {
    const starter = fakeStarter(() => ({ started: true, runId: 'r' }));
    const now = (): Date => new Date('2026-03-01T10:00:00Z');
    scheduler = startScheduler({
      entries: [
        { cron: '0 2 * * *', task: 'tasks/nightly.md', timezone: 'UTC' },
        { cron: '30 10 * * *', task: 'tasks/morning.md', timezone: 'Europe/Berlin' },
        { cron: '*/15 * * * *', task: 'tasks/often.md', timezone: 'UTC' },
      ],
      starter,
      log,
      now,
    });
    expect(scheduler.nextRuns()).toEqual([
      { task: 'often', cron: '*/15 * * * *', next: new Date('2026-03-01T10:15:00Z') },
      { task: 'nightly', cron: '0 2 * * *', next: new Date('2026-03-02T02:00:00Z') },
      // 10:30 in Berlin (UTC+1 in March before DST) is 09:30 UTC: already past today.
      { task: 'morning', cron: '30 10 * * *', next: new Date('2026-03-02T09:30:00Z') },
    ]);
  });

  it('refuses bad cron expressions with a ConfigError naming each entry index', () => {
    const starter = fakeStarter(() => ({ started: true, runId: 'r' }));
    const start = (): Scheduler =>
      startScheduler({
        entries: [
          { cron: '0 2 * * *', task: 'tasks/ok.md' },
          { cron: '61 * * * *', task: 'tasks/bad-minute.md' },
          { cron: 'nightly', task: 'tasks/word.md' },
          { cron: '0 2 * * *', task: 'tasks/tz.md', timezone: 'Mars/Olympus' },
        ],
        starter,
        log,
      });
    expect(start).toThrow(ConfigError);
    try {
      start();
    } catch (error) {
      const issues = (error as ConfigError).issues;
      expect(issues).toHaveLength(3);
      expect(issues[0]).toMatch(/^schedule\[1\] \(tasks\/bad-minute\.md\): invalid cron expression "61 \* \* \* \*".*minute/);
      expect(issues[1]).toMatch(/^schedule\[2\] .*expected a cron expression/);
      expect(issues[2]).toMatch(/^schedule\[3\] .*unknown timezone "Mars\/Olympus"/);
    }
    expect(starter.requests).toEqual([]);
  });
});
