import { describe, expect, it } from 'vitest';
import { cronProblem, scheduleSchema, serveSchema } from '../../src/config/triggers.js';
import { scheduleTrigger } from '../../src/triggers/cron.js';
import { taskNameOf } from '../../src/loop/task.js';

describe('schedule config', () => {
  it('defaults to no entries and takes cron, task and timezone', () => {
    expect(scheduleSchema.parse(undefined)).toEqual([]);
    expect(scheduleSchema.parse([{ cron: '0 2 * * *', task: 'tasks/nightly.md', timezone: 'Europe/Berlin' }])).toEqual([
      { cron: '0 2 * * *', task: 'tasks/nightly.md', timezone: 'Europe/Berlin' },
    ]);
  });

  it('reports a bad cron or timezone at the path of the key, and unknown keys', () => {
    const result = scheduleSchema.safeParse([
      { cron: '0 2 * * *', task: 'tasks/a.md' },
      { cron: '0 25 * * *', task: 'tasks/b.md' },
      { cron: '0 2 * * *', task: 'tasks/c.md', timezone: 'Nowhere/City' },
      { cron: '0 2 * * *', task: 'tasks/d.md', tz: 'UTC' },
    ]);
    expect(result.success).toBe(false);
    const issues = result.error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`) ?? [];
    expect(issues).toEqual([
      expect.stringMatching(/^1\.cron: invalid cron expression "0 25 \* \* \*".*hour/),
      expect.stringMatching(/^2\.timezone: unknown timezone "Nowhere\/City"/),
      expect.stringMatching(/^3: Unrecognized key: "tz"/),
    ]);
  });

  it('takes five- and six-field crons and nicknames, not dates or seven fields', () => {
    for (const cron of ['0 2 * * *', '*/30 * * * * *', '@daily', '0 9 * * MON-FRI']) expect(cronProblem(cron), cron).toBeUndefined();
    for (const cron of ['2030-01-01T00:00:00', '* * * * * * *', '* * *', 'every night', '0 0 30 2 *']) expect(cronProblem(cron), cron).toEqual(expect.any(String));
  });
});

describe('serve config', () => {
  it('has safe defaults: loopback, a secret env var name, 1 MiB cap', () => {
    expect(serveSchema.parse(undefined)).toEqual({
      host: '127.0.0.1',
      port: 8787,
      secretEnv: 'LOOPBOX_WEBHOOK_SECRET',
      maxBodyBytes: 1024 * 1024,
      queueSize: 16,
      replayWindow: 10_000,
      signatureWindow: 300_000,
      tasks: ['tasks/*.md'],
      metrics: { enabled: true },
    });
  });

  it('takes sizes as strings and defaults the GitHub events', () => {
    const config = serveSchema.parse({ maxBodyBytes: '64k', github: { task: 'tasks/fix-ci.md' } });
    expect(config.maxBodyBytes).toBe(65_536);
    expect(config.github).toEqual({ task: 'tasks/fix-ci.md', events: ['workflow_run', 'check_suite'] });
  });

  it('refuses a secret in place of an env var name, unknown events and unknown keys', () => {
    expect(serveSchema.safeParse({ secretEnv: 'hunter2 is my secret' }).success).toBe(false);
    expect(serveSchema.safeParse({ github: { task: 't.md', events: ['push'] } }).success).toBe(false);
    expect(serveSchema.safeParse({ secret: 'x' }).success).toBe(false);
    expect(serveSchema.safeParse({ maxBodyBytes: 'huge' }).success).toBe(false);
  });
});

describe('trigger names', () => {
  it('names tasks as the loop does and records schedule triggers', () => {
    expect(taskNameOf('tasks/Fix-Login.md')).toBe('fix-login');
    expect(taskNameOf('/abs/notes.txt')).toBe('notes');
    expect(scheduleTrigger(' 0 2 * * * ')).toBe('schedule:0 2 * * *');
  });
});
