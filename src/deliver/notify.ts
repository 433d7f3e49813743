// `notify:`: when loops end, POST a versioned JSON body to a webhook (HMAC-signed with the
// scheme of `loopbox serve`'s POST /trigger, so one receiver can check both) and/or run a
// command on the host with the same JSON on stdin. Each attempt has a timeout; failures are
// retried with backoff; nothing here can change how a loop ended, it only logs and records.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { execa } from 'execa';
import { ConfigError, describe } from '../common/errors.js';
import type { NotifyConfig } from '../config/deliver.js';
import { MIN_SECRET_BYTES, signTrigger } from '../triggers/serve.js';

/** The body's schema id; a breaking change gets a new number (docs/notify.md). */
export const NOTIFY_SCHEMA = 'loopbox.notify/v1';

export type NotifyEvent = 'loop-end' | 'schedule-night';

/** One run in a notification (docs/notify.md, version 1). */
export interface NotifyRun {
  runId: string;
  task: string;
  endState: string;
  reason: string;
  exitCode: number;
  trigger: string;
  iterations: number;
  wallMs: number;
  tokens: number;
  blocked: number;
  evidence: string;
  branch: string;
  verifiedCommit: string | null;
  lastCommit: string | null;
  push: { status: string; remote?: string; branch?: string; commit?: string; error?: string } | null;
  pullRequest: { status: string; url?: string; number?: number; error?: string } | null;
  report: string | null;
  needsHuman: boolean;
}

export interface NotifyBody {
  schema: typeof NOTIFY_SCHEMA;
  event: NotifyEvent;
  delivery: string;
  sentAt: string;
  host: string;
  loopbox: string;
  runs: NotifyRun[];
}

export interface NotifyAttemptLog {
  target: 'webhook' | 'command';
  attempt: number;
  ok: boolean;
  /** HTTP status, or the command's exit code. */
  status?: number | undefined;
  error?: string | undefined;
  ms: number;
}

export interface NotifyResult {
  target: 'webhook' | 'command';
  ok: boolean;
  attempts: number;
  error?: string | undefined;
  /** The run's stop signal fired: the attempt in flight was cut and no further one was made. */
  cancelled?: boolean;
}

export interface NotifyOptions {
  config: NotifyConfig;
  env?: NodeJS.ProcessEnv;
  /** Called for every attempt (the caller logs it). */
  log?: (entry: NotifyAttemptLog) => void;
  /** The first backoff in ms (then doubled); default 1000. Tests shorten it. */
  backoffMs?: number;
  version: string;
  /** The run's stop (Ctrl+C): cuts the attempt in flight and the backoff; no retry after it. */
  signal?: AbortSignal | undefined;
}

/** The HMAC secret from `notify.secretEnv`, or undefined when none is configured; a ConfigError when named but unusable. */
export function notifySecret(config: NotifyConfig, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!config.secretEnv) return undefined;
  const secret = env[config.secretEnv];
  const hint = `export ${config.secretEnv}="$(openssl rand -hex 32)" and give the receiver the same value, or remove notify.secretEnv to send unsigned.`;
  if (secret === undefined || secret.trim() === '') throw new ConfigError(`notify.secretEnv names ${config.secretEnv}, which is ${secret === undefined ? 'not set' : 'empty'}.`, [], { hint });
  if (Buffer.byteLength(secret) < MIN_SECRET_BYTES) throw new ConfigError(`The notify secret ${config.secretEnv} is ${Buffer.byteLength(secret)} bytes long; at least ${MIN_SECRET_BYTES} are needed.`, [], { hint });
  return secret;
}

export function notifyBody(event: NotifyEvent, runs: NotifyRun[], version: string): NotifyBody {
  return { schema: NOTIFY_SCHEMA, event, delivery: randomUUID(), sentAt: new Date().toISOString(), host: hostname(), loopbox: version, runs };
}

/** The request a webhook gets: headers (signed per attempt: the timestamp is fresh) and the exact body bytes. */
export function webhookRequest(body: NotifyBody, secret: string | undefined, version: string, now = Date.now()): { headers: Record<string, string>; payload: string } {
  const payload = JSON.stringify(body);
  const timestamp = String(Math.floor(now / 1000));
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': `loopbox/${version}`,
    'x-loopbox-event': body.event,
    'x-loopbox-delivery': body.delivery,
    'x-loopbox-timestamp': timestamp,
  };
  if (secret) headers['x-loopbox-signature-256'] = signTrigger(secret, timestamp, body.delivery, payload);
  return { headers, payload };
}

/** Waits `ms`, or less when `signal` fires. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

type Attempts = { ok: boolean; attempts: number; error?: string | undefined; cancelled?: boolean };

async function withRetries(attempts: number, backoffMs: number, signal: AbortSignal | undefined, once: (attempt: number) => Promise<{ ok: boolean; retry: boolean; error?: string }>): Promise<Attempts> {
  let last: string | undefined;
  const cancelled = (made: number): Attempts => ({ ok: false, attempts: made, error: `cancelled: the run was stopped${last ? ` (last attempt: ${last})` : ''}`, cancelled: true });
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (signal?.aborted) return cancelled(attempt - 1);
    const r = await once(attempt);
    if (r.ok) return { ok: true, attempts: attempt };
    last = r.error;
    if (signal?.aborted) return cancelled(attempt);
    if (!r.retry || attempt === attempts) return { ok: false, attempts: attempt, error: last };
    await pause(backoffMs * 2 ** (attempt - 1), signal);
  }
  return { ok: false, attempts, error: last };
}

async function sendWebhook(url: string, body: NotifyBody, options: NotifyOptions, secret: string | undefined): Promise<NotifyResult> {
  const { config } = options;
  const r = await withRetries(config.attempts, options.backoffMs ?? 1000, options.signal, async (attempt) => {
    const start = Date.now();
    const { headers, payload } = webhookRequest(body, secret, options.version);
    try {
      // A redirect is not followed: the body (and its signature) go to the configured URL only.
      const res = await fetch(url, { method: 'POST', headers, body: payload, redirect: 'manual', signal: options.signal ? AbortSignal.any([AbortSignal.timeout(config.timeout), options.signal]) : AbortSignal.timeout(config.timeout) });
      await res.arrayBuffer().catch(() => undefined);
      const ok = res.status >= 200 && res.status < 300;
      const error = ok ? undefined : `HTTP ${res.status}${res.status >= 300 && res.status < 400 ? ' (redirects are not followed)' : ''}`;
      options.log?.({ target: 'webhook', attempt, ok, status: res.status, error, ms: Date.now() - start });
      // 4xx other than 408/429 will not get better by asking again.
      return { ok, retry: res.status >= 500 || res.status === 408 || res.status === 429, error };
    } catch (e) {
      const timedOut = e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError');
      const error = options.signal?.aborted ? 'cut short: the run was stopped' : timedOut ? `no answer within ${config.timeout} ms` : describe(e).split('\n')[0];
      options.log?.({ target: 'webhook', attempt, ok: false, error, ms: Date.now() - start });
      return { ok: false, retry: true, error };
    }
  });
  return { target: 'webhook', ...r };
}

async function runCommand(argv: readonly string[], body: NotifyBody, options: NotifyOptions): Promise<NotifyResult> {
  const { config } = options;
  const payload = JSON.stringify(body);
  const r = await withRetries(config.attempts, options.backoffMs ?? 1000, options.signal, async (attempt) => {
    const start = Date.now();
    const result = await execa(argv[0]!, argv.slice(1), {
      input: payload,
      timeout: config.timeout,
      ...(options.signal ? { cancelSignal: options.signal } : {}),
      reject: false,
      // Killed with its children's pipes closed: a command that hangs cannot hold loopbox.
      forceKillAfterDelay: 2000,
      env: { LOOPBOX_NOTIFY_EVENT: body.event, LOOPBOX_NOTIFY_SCHEMA: NOTIFY_SCHEMA },
      stdout: 'ignore',
      stderr: 'pipe',
      maxBuffer: 64 * 1024,
    });
    const ok = result.exitCode === 0;
    const stderr = typeof result.stderr === 'string' ? result.stderr.trim().split('\n').slice(-3).join(' | ') : '';
    const error = ok ? undefined : result.timedOut ? `timed out after ${config.timeout} ms` : result.exitCode === undefined ? describe(result.cause ?? result.shortMessage).split('\n')[0] : `exit code ${result.exitCode}${stderr ? `: ${stderr}` : ''}`;
    options.log?.({ target: 'command', attempt, ok, status: result.exitCode, error, ms: Date.now() - start });
    return { ok, retry: true, error };
  });
  return { target: 'command', ...r };
}

/** Sends `body` to every configured target; never throws for a receiver's failure (see the results). */
export async function notify(body: NotifyBody, options: NotifyOptions): Promise<NotifyResult[]> {
  const { config } = options;
  const secret = notifySecret(config, options.env);
  const results: Array<Promise<NotifyResult>> = [];
  if (config.webhook) results.push(sendWebhook(config.webhook, body, options, secret));
  if (config.command) results.push(runCommand(config.command, body, options));
  return Promise.all(results);
}
