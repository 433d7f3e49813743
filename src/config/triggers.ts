// Config keys for the two triggers: `schedule:` (cron entries for `loopbox schedule`) and
// `serve:` (the webhook server of `loopbox serve`), both part of configSchema.
import { Cron } from 'croner';
import { z } from 'zod';
import { describe } from '../common/errors.js';
import { parseDuration, parseSize } from './units.js';

/**
 * Why `cron` (with `timezone`) is not a usable schedule, or undefined when it is. Five fields
 * (minute precision), six (leading seconds) or a nickname like `@daily`; croner would also take
 * an ISO date as a one-shot "pattern", which is not a schedule.
 */
export function cronProblem(cron: string, timezone?: string): string | undefined {
  const text = cron.trim();
  if (!/^@[a-z]+$/i.test(text) && !/\s/.test(text)) {
    return `expected a cron expression like "0 2 * * *" (five fields, or six with seconds first), got ${JSON.stringify(cron)}`;
  }
  if (timezone !== undefined && !isTimeZone(timezone)) return `unknown timezone ${JSON.stringify(timezone)}; expected an IANA name like "Europe/Berlin"`;
  let job: Cron | undefined;
  try {
    job = new Cron(text, { paused: true, mode: '5-or-6-parts', ...(timezone === undefined ? {} : { timezone }) });
    if (job.nextRun() === null) return `${JSON.stringify(cron)} never fires`;
    return undefined;
  } catch (error) {
    return `invalid cron expression ${JSON.stringify(cron)}: ${describe(error).replace(/^CronPattern: /, '')}`;
  } finally {
    job?.stop();
  }
}

function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

export const scheduleEntrySchema = z
  .strictObject({
    /** Cron expression, evaluated in `timezone` (default: the host's local time). */
    cron: z.string().min(1),
    /** Task file path, relative to the repo root. */
    task: z.string().min(1),
    timezone: z.string().min(1).optional(),
  })
  .superRefine((entry, ctx) => {
    const problem = cronProblem(entry.cron, entry.timezone);
    if (problem) ctx.addIssue({ code: 'custom', path: [entry.timezone !== undefined && problem.startsWith('unknown timezone') ? 'timezone' : 'cron'], message: problem });
  });

export const scheduleSchema = z.array(scheduleEntrySchema).default([]);

const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined || bytes < 1) {
    ctx.addIssue({ code: 'custom', message: `expected a size like "1m" or "64k", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return bytes;
});

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined || ms < 1000) {
    ctx.addIssue({ code: 'custom', message: `expected a duration of at least 1s like "5m", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

export const GITHUB_EVENTS = ['workflow_run', 'check_suite'] as const;

export const serveSchema = z
  .strictObject({
    /** Loopback by default: put a TLS reverse proxy in front before exposing it. */
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8787),
    /** Name of the environment variable that holds the HMAC secret; the secret is never in the file. */
    secretEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name').default('LOOPBOX_WEBHOOK_SECRET'),
    /** Request bodies above this are refused with 413 (GitHub caps payloads at 25 MB; CI events are far smaller). */
    maxBodyBytes: size.prefault('1m'),
    /** Starts waiting on the loop runner at once; more are refused with 429. */
    queueSize: z.number().int().min(1).max(1024).default(16),
    /** How many signed requests (delivery id and signature) are remembered to refuse replays (409). */
    replayWindow: z.number().int().min(1).max(1_000_000).default(10_000),
    /** POST /trigger: how far X-Loopbox-Timestamp may be from the server's clock, either way. */
    signatureWindow: duration.prefault('5m'),
    /** GitHub webhook: the task to run when CI fails. Without it, /hooks/github answers 404. */
    github: z
      .strictObject({
        task: z.string().min(1),
        events: z.array(z.enum(GITHUB_EVENTS)).min(1).default([...GITHUB_EVENTS]),
      })
      .optional(),
    /** Task files (globs) the generic POST /trigger may start, by task name. */
    tasks: z.array(z.string().min(1)).default(['tasks/*.md']),
    /** GET /metrics (Prometheus): on by default; without a bearer token only on a loopback address. */
    metrics: z
      .strictObject({
        enabled: z.boolean().default(true),
        /** Name of the environment variable that holds the bearer token a scraper must send. */
        tokenEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name').optional(),
      })
      .prefault({}),
  })
  .prefault({});

export type ScheduleEntry = z.output<typeof scheduleEntrySchema>;
export type ScheduleConfig = z.output<typeof scheduleSchema>;
export type ServeConfig = z.output<typeof serveSchema>;
export type ServeConfigInput = z.input<typeof serveSchema>;
