// `loopbox serve`: a small webhook server that starts loops. POST /hooks/github starts the
// configured task when a CI run fails; POST /trigger starts an allowed task by name. Both are
// HMAC-signed (constant-time check), size-capped, replay-checked, and queue-limited. /trigger's
// signature covers a timestamp and the delivery id with the body (issue 8 item 4), so a captured
// request can be neither replayed under a new delivery id nor later than serve.signatureWindow.
// docs/triggers.md has the status code table.
import { createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { z } from 'zod';
import { ConfigError, describe } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import type { ServeConfig } from '../config/triggers.js';
import { taskNameOf } from '../loop/task.js';
import type { MetricsEndpoint } from './metrics.js';
import type { LoopStarter, StartRequest, TriggerLog } from './starter.js';

export interface ServeOptions {
  config: ServeConfig;
  /** The HMAC secret, read by the caller from the env var named by `config.secretEnv`. */
  secret: string | undefined;
  starter: LoopStarter;
  /** Task name (from POST /trigger) → task file, or undefined when it is not an allowed task. */
  resolveTask: (name: string) => string | undefined;
  log: TriggerLog;
  /**
   * GET /metrics (docs/metrics.md). Without it /metrics answers 404. `token`: the bearer token
   * a scraper must send (from `serve.metrics.tokenEnv`); without one, /metrics is answered only
   * when the server listens on a loopback address.
   */
  metrics?: { endpoint: MetricsEndpoint; token?: string | undefined } | undefined;
  /** Read timeouts; the defaults are HEADERS_TIMEOUT_MS and REQUEST_TIMEOUT_MS (tests shorten them). */
  timeouts?: { headersMs?: number; requestMs?: number };
}

export interface TriggerServer {
  /** e.g. http://127.0.0.1:8787 (the real port when config.port is 0). */
  url: string;
  /** Stops accepting, lets requests in progress finish (at most CLOSE_GRACE_MS), then hangs up; idempotent. */
  close(): Promise<void>;
}

/** Seconds a client is told to wait after a 429. */
export const RETRY_AFTER_S = 30;
/** Slowloris defence: a client has this long to send its headers, and this long for the whole request. */
export const HEADERS_TIMEOUT_MS = 10_000;
export const REQUEST_TIMEOUT_MS = 30_000;
const CLOSE_GRACE_MS = 5_000;
const MAX_CONNECTIONS = 256;

const SIGNATURE = /^sha256=([0-9a-f]{64})$/i;
const DELIVERY = /^[A-Za-z0-9._:-]{1,128}$/;
const GITHUB_EVENT = /^[a-z_]{1,64}$/;

const TIMESTAMP = /^\d{1,12}$/;
/** Shortest secret `loopbox serve` accepts, in bytes (as many as the HMAC-SHA256 output). */
export const MIN_SECRET_BYTES = 32;

/** `sha256=<hex>` of HMAC-SHA256(secret, body): what GitHub sends in X-Hub-Signature-256. */
export function signBody(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/**
 * What a POST /trigger signature covers (docs/triggers.md): `loopbox-v1`, the timestamp (Unix
 * seconds, as sent in X-Loopbox-Timestamp), the delivery id, each followed by a newline, then
 * the raw body. Neither field may hold a newline, so no two requests give the same string.
 */
export function triggerSigningString(timestamp: string, delivery: string, body: string | Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`loopbox-v1\n${timestamp}\n${delivery}\n`), typeof body === 'string' ? Buffer.from(body) : body]);
}

/** The X-Loopbox-Signature-256 value for a POST /trigger. */
export function signTrigger(secret: string, timestamp: string, delivery: string, body: string | Uint8Array): string {
  return signBody(secret, triggerSigningString(timestamp, delivery, body));
}

/**
 * Checks a `sha256=<hex>` signature header against the body in constant time. A missing,
 * repeated or malformed header is false, never an exception: timingSafeEqual throws on buffers
 * of different lengths, so only a well-formed 32-byte digest is compared, and a malformed one
 * is compared as zeros so both paths do the same work.
 */
export function verifySignature(secret: string, body: Uint8Array, header: string | string[] | undefined): boolean {
  const expected = createHmac('sha256', secret).update(body).digest();
  const match = typeof header === 'string' ? SIGNATURE.exec(header.trim()) : null;
  const given = match?.[1] === undefined ? Buffer.alloc(expected.length) : Buffer.from(match[1], 'hex');
  return timingSafeEqual(given, expected) && match !== null;
}

/** The secret from the environment variable `config.secretEnv`; a ConfigError naming it when unset or empty. */
export function secretFromEnv(config: Pick<ServeConfig, 'secretEnv'>, env: NodeJS.ProcessEnv = process.env): string {
  const secret = env[config.secretEnv];
  checkSecret(config.secretEnv, secret);
  return secret;
}

function checkSecret(name: string, secret: string | undefined): asserts secret is string {
  const hint = `export ${name}="$(openssl rand -hex 32)" and give GitHub (or the /trigger caller) the same value. Set serve.secretEnv to use another variable.`;
  if (secret === undefined || secret.trim() === '') {
    throw new ConfigError(`The webhook secret ${name} is ${secret === undefined ? 'not set' : 'empty'}; loopbox serve refuses to start without one.`, [], { hint });
  }
  // A short secret can be guessed offline from one captured signature.
  const bytes = Buffer.byteLength(secret);
  if (bytes < MIN_SECRET_BYTES) {
    throw new ConfigError(`The webhook secret ${name} is ${bytes} bytes long; loopbox serve needs at least ${MIN_SECRET_BYTES}.`, [], { hint });
  }
}

/**
 * The bearer token from the environment variable `config.metrics.tokenEnv`, or undefined when
 * no variable is named. A named variable that is unset, short, or equal to the webhook secret is
 * a ConfigError: a metrics reader must not hold the key that signs webhooks.
 */
export function metricsTokenFromEnv(config: Pick<ServeConfig, 'metrics' | 'secretEnv'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const name = config.metrics.tokenEnv;
  if (name === undefined) return undefined;
  const token = env[name];
  const hint = `export ${name}="$(openssl rand -hex 32)" and give Prometheus the same value (authorization: { credentials_file: ... }).`;
  if (token === undefined || token.trim() === '') throw new ConfigError(`The metrics token ${name} (serve.metrics.tokenEnv) is ${token === undefined ? 'not set' : 'empty'}.`, [], { hint });
  const bytes = Buffer.byteLength(token);
  if (bytes < MIN_SECRET_BYTES) throw new ConfigError(`The metrics token ${name} is ${bytes} bytes long; loopbox serve needs at least ${MIN_SECRET_BYTES}.`, [], { hint });
  if (token === env[config.secretEnv]) {
    throw new ConfigError(`The metrics token ${name} is the webhook secret ${config.secretEnv}; use a separate token.`, [], { hint: 'Whoever scrapes metrics must not be able to sign webhooks. ' + hint });
  }
  return token;
}

/** Constant-time check of `Authorization: Bearer <token>`; anything else is false. */
export function verifyBearer(token: string, header: string | undefined): boolean {
  const match = typeof header === 'string' ? /^Bearer ([\x21-\x7e]{1,1024})$/.exec(header.trim()) : null;
  // Compare digests, so the lengths are equal and the time does not depend on where they differ.
  const digest = (v: string): Buffer => createHmac('sha256', 'loopbox-metrics').update(v).digest();
  return timingSafeEqual(digest(match?.[1] ?? ''), digest(token)) && match !== null;
}

export type CiVerdict = { failed: true; conclusion: string; summary: Record<string, unknown> } | { failed: false; why: string };

/**
 * A failed CI run: `workflow_run` completed with failure/timed_out, or `check_suite` completed
 * with failure. Anything else (success, cancelled, in progress, other events) is ignored.
 */
export function ciVerdict(event: string, payload: unknown): CiVerdict {
  const body = isRecord(payload) ? payload : {};
  const action = typeof body.action === 'string' ? body.action : undefined;
  const failing: Record<string, readonly string[]> = { workflow_run: ['failure', 'timed_out'], check_suite: ['failure'] };
  const conclusions = failing[event];
  if (!conclusions) return { failed: false, why: `event ${event} does not start loops` };
  const nested = body[event];
  const run = isRecord(nested) ? nested : {};
  const conclusion = typeof run.conclusion === 'string' ? run.conclusion : null;
  if (action !== 'completed') return { failed: false, why: `${event} action ${action ?? '(none)'}, not completed` };
  if (conclusion === null || !conclusions.includes(conclusion)) return { failed: false, why: `${event} conclusion ${conclusion ?? '(none)'}, not ${conclusions.join(' or ')}` };
  const repository = isRecord(body.repository) ? body.repository.full_name : undefined;
  return {
    failed: true,
    conclusion,
    summary: { repository, name: run.name, branch: run.head_branch, sha: run.head_sha, url: run.html_url ?? run.url },
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Signed requests seen lately, oldest forgotten first. A request is a replay when its delivery id
 * or its signature was seen: GitHub signs the body only, so a captured webhook sent again under a
 * new X-GitHub-Delivery still carries a known signature.
 */
class DeliveryWindow {
  private readonly seen = new Set<string>();
  constructor(private readonly size: number) {}
  /** True when neither key was seen (and both are now remembered). */
  claim(delivery: string, signature: string): boolean {
    const keys = [`d:${delivery}`, `s:${signature.trim().toLowerCase()}`];
    if (keys.some((k) => this.seen.has(k))) return false;
    for (const k of keys) this.seen.add(k);
    while (this.seen.size > this.size * 2) {
      const oldest = this.seen.values().next().value;
      if (oldest === undefined) break;
      this.seen.delete(oldest);
    }
    return true;
  }
  forget(delivery: string, signature: string): void {
    this.seen.delete(`d:${delivery}`);
    this.seen.delete(`s:${signature.trim().toLowerCase()}`);
  }
}

const triggerBody = z.strictObject({ task: z.string().min(1).max(128) });

/** A request turned away: thrown inside the handler, answered and logged in one place. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(reason);
    this.name = 'Refusal';
  }
}

type Reply = { status: number; body: Record<string, unknown>; headers?: Record<string, string> };
/** What a signed request claimed in the replay cache, given back when it was not acted on. */
type Claim = { delivery: string; signature: string };

const ROUTES: Record<string, 'GET' | 'POST'> = { '/healthz': 'GET', '/metrics': 'GET', '/hooks/github': 'POST', '/trigger': 'POST' };

export async function startServer(options: ServeOptions): Promise<TriggerServer> {
  const { config, starter, resolveTask, log } = options;
  checkSecret(config.secretEnv, options.secret);
  const secret = options.secret;
  const deliveries = new DeliveryWindow(config.replayWindow);
  const metrics = options.metrics;
  // Filled in once listening: a token-less /metrics is answered only on a loopback address.
  let loopbackOnly = true;
  let inFlight = 0;
  let closing = false;

  // Slowloris defence: a client that trickles its headers or body is cut off at these limits.
  const headersTimeout = options.timeouts?.headersMs ?? HEADERS_TIMEOUT_MS;
  const requestTimeout = Math.max(options.timeouts?.requestMs ?? REQUEST_TIMEOUT_MS, headersTimeout);
  const server = http.createServer({
    headersTimeout,
    requestTimeout,
    // How often the timeouts above are enforced (default 30 s, which would stretch them).
    connectionsCheckingInterval: Math.min(1_000, headersTimeout),
  });
  server.keepAliveTimeout = 5_000;
  server.maxConnections = MAX_CONNECTIONS;

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    handle(req, res).catch((error: unknown) => {
      log({ event: 'webhook-error', error: describe(error), remote: req.socket.remoteAddress });
      if (!res.headersSent) send(res, { status: 500, body: { error: 'internal error' } });
      else res.destroy();
    });
  });
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    // Timed out (slowloris), oversized headers, or not HTTP at all: answer as Node would, and log it.
    const [status, text] =
      error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout'] : error.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large'] : [400, 'Bad Request'];
    log({ event: 'webhook-refused', status, reason: `${text.toLowerCase()} (${error.code ?? describe(error)})`, remote: socket.remoteAddress });
    if (socket.writable && error.code !== 'ECONNRESET') socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    else socket.destroy();
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    let delivery: string | undefined;
    try {
      if (path === '/metrics' && req.method === 'GET') {
        await scrape(req, res);
        return;
      }
      send(res, await route(req, path, (id) => (delivery = id)));
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      log({ event: 'webhook-refused', status: error.status, reason: error.reason, remote: req.socket.remoteAddress, method: req.method, path, delivery });
      send(res, { status: error.status, body: { error: error.reason }, headers: error.headers });
      // 413: the rest of the body is not read; hang up instead of draining it.
      if (error.status === 413) hangUp(req, res);
    }
  }

  /** GET /metrics: read-only counts, behind a bearer token when one is configured (docs/metrics.md). */
  async function scrape(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!metrics) throw new Refusal(404, 'metrics off (serve.metrics.enabled)');
    if (metrics.token !== undefined) {
      if (!verifyBearer(metrics.token, req.headers.authorization)) throw new Refusal(401, 'metrics need Authorization: Bearer <serve.metrics.tokenEnv>', { 'WWW-Authenticate': 'Bearer realm="loopbox-metrics"' });
    } else if (!loopbackOnly) {
      throw new Refusal(403, 'metrics without a token are served on a loopback address only: set serve.metrics.tokenEnv');
    }
    const text = await metrics.endpoint.render();
    res.writeHead(200, { 'Content-Type': metrics.endpoint.contentType, 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
    res.end(text);
  }

  async function route(req: http.IncomingMessage, path: string, noteDelivery: (id: string) => void): Promise<Reply> {
    const method = ROUTES[path];
    if (!method) throw new Refusal(404, 'unknown path');
    if (req.method !== method) throw new Refusal(405, `method ${req.method ?? '?'} not allowed`, { Allow: method });
    if (path === '/healthz') return { status: 200, body: { ok: true, queue: inFlight } };
    if (closing) throw new Refusal(503, 'shutting down', { 'Retry-After': String(RETRY_AFTER_S) });

    const github = path === '/hooks/github';
    if (github && !config.github) throw new Refusal(404, 'GitHub webhook not configured (serve.github.task)');
    // Header checks first: an unsigned request is refused before its body is read.
    const signature = req.headers[github ? 'x-hub-signature-256' : 'x-loopbox-signature-256'];
    if (signature === undefined) throw new Refusal(401, 'missing signature');
    if (typeof signature !== 'string' || !SIGNATURE.test(signature.trim())) throw new Refusal(401, 'malformed signature');
    const delivery = req.headers[github ? 'x-github-delivery' : 'x-loopbox-delivery'];
    if (typeof delivery !== 'string' || !DELIVERY.test(delivery)) throw new Refusal(400, 'missing or malformed delivery id');
    noteDelivery(delivery);
    const event = github ? req.headers['x-github-event'] : 'trigger';
    if (typeof event !== 'string' || !GITHUB_EVENT.test(event)) throw new Refusal(400, 'missing or malformed X-GitHub-Event');
    let timestamp: string | undefined;
    if (!github) {
      const header = req.headers['x-loopbox-timestamp'];
      if (typeof header !== 'string' || !TIMESTAMP.test(header)) throw new Refusal(401, 'missing or malformed X-Loopbox-Timestamp');
      // The timestamp is signed: a request outside the window is refused whoever made it, and
      // one inside it with a forged timestamp fails the signature below.
      if (Math.abs(Date.now() / 1000 - Number(header)) > config.signatureWindow / 1000) throw new Refusal(401, 'timestamp outside the signature window');
      timestamp = header;
    }

    const body = await readBody(req, config.maxBodyBytes);
    const signed = timestamp === undefined ? body : triggerSigningString(timestamp, delivery, body);
    if (!verifySignature(secret, signed, signature)) throw new Refusal(401, 'bad signature');
    // Only signed requests claim an id, so nobody else can burn ids in advance.
    if (!deliveries.claim(delivery, signature)) throw new Refusal(409, 'replayed delivery id or signature');
    let payload: unknown;
    try {
      payload = JSON.parse(body.toString('utf8'));
    } catch {
      throw new Refusal(400, 'body is not JSON (GitHub: set the content type to application/json)');
    }

    if (github) return githubHook(event, { delivery, signature }, payload, req);
    const parsed = triggerBody.safeParse(payload);
    if (!parsed.success) throw new Refusal(400, 'expected {"task": "<name>"}');
    const name = parsed.data.task.toLowerCase();
    if (!isSafeName(name)) throw new Refusal(400, 'task must be a task name like "fix-tests"');
    const taskFile = resolveTask(name);
    if (taskFile === undefined) throw new Refusal(404, `unknown task ${JSON.stringify(name)}`);
    return start({ taskFile, trigger: `webhook:trigger:${delivery}` }, { delivery, signature }, req, {});
  }

  function githubHook(event: string, claim: Claim, payload: unknown, req: http.IncomingMessage): Promise<Reply> | Reply {
    const { delivery } = claim;
    const hook = config.github;
    if (!hook) throw new Refusal(404, 'GitHub webhook not configured');
    if (event === 'ping') {
      const events = isRecord(payload) && isRecord(payload.hook) ? payload.hook.events : undefined;
      log({ event: 'webhook-ping', delivery, hookEvents: events, remote: req.socket.remoteAddress });
      return { status: 200, body: { ok: true, pong: true } };
    }
    if (!(hook.events as readonly string[]).includes(event)) {
      return ignored(`event ${event} is not in serve.github.events`, delivery, req);
    }
    const verdict = ciVerdict(event, payload);
    if (!verdict.failed) return ignored(verdict.why, delivery, req);
    return start({ taskFile: hook.task, trigger: `webhook:github:${event}:${delivery}` }, claim, req, { conclusion: verdict.conclusion, ...verdict.summary });
  }

  function ignored(why: string, delivery: string, req: http.IncomingMessage): Reply {
    log({ event: 'webhook-ignored', reason: why, delivery, remote: req.socket.remoteAddress });
    return { status: 202, body: { ignored: why } };
  }

  async function start(request: StartRequest, claim: Claim, req: http.IncomingMessage, detail: Record<string, unknown>): Promise<Reply> {
    const task = taskNameOf(request.taskFile);
    const retry = { 'Retry-After': String(RETRY_AFTER_S) };
    // A delivery that was not acted on is forgotten, so a redelivery (same id on GitHub) can retry.
    if (inFlight >= config.queueSize) {
      deliveries.forget(claim.delivery, claim.signature);
      throw new Refusal(429, `start queue full (${config.queueSize})`, retry);
    }
    inFlight++;
    let result;
    try {
      result = await starter.start(request);
    } catch (error) {
      deliveries.forget(claim.delivery, claim.signature);
      log({ event: 'webhook-error', task, trigger: request.trigger, error: describe(error), remote: req.socket.remoteAddress });
      return { status: 500, body: { error: 'could not start the loop' } };
    } finally {
      inFlight--;
    }
    if (result.started) {
      log({ event: 'webhook-started', task, trigger: request.trigger, runId: result.runId, remote: req.socket.remoteAddress, ...detail });
      return { status: 202, body: { runId: result.runId, task } };
    }
    switch (result.reason) {
      case 'busy':
        // Accepted and folded into the loop already running: CI that fails twice (workflow_run
        // and check_suite for the same run, or a rerun) must not start a second loop.
        log({ event: 'webhook-busy', task, trigger: request.trigger, detail: result.detail, remote: req.socket.remoteAddress });
        return { status: 202, body: { busy: result.detail, task } };
      case 'queue-full':
        deliveries.forget(claim.delivery, claim.signature);
        throw new Refusal(429, `loop queue full: ${result.detail}`, retry);
      case 'unknown-task':
        deliveries.forget(claim.delivery, claim.signature);
        throw new Refusal(404, `unknown task ${JSON.stringify(task)}: ${result.detail}`);
    }
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(
        new ConfigError(`loopbox serve cannot listen on ${config.host}:${config.port}: ${error.code ?? describe(error)}`, [], {
          cause: error,
          hint: error.code === 'EADDRINUSE' ? 'Another process has this port; set serve.port.' : 'Check serve.host and serve.port.',
        }),
      );
    };
    server.once('error', onError);
    server.listen(config.port, config.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (error) => log({ event: 'webhook-error', error: describe(error) }));

  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  loopbackOnly = isLoopback(address.address);
  log({ event: 'serve-listening', url, github: config.github?.task ?? null, metrics: !metrics ? 'off' : metrics.token !== undefined ? 'bearer' : loopbackOnly ? 'loopback' : 'refused' });
  if (!loopbackOnly) {
    log({ event: 'serve-exposed', url, warning: 'listening beyond loopback: put a TLS reverse proxy in front (docs/triggers.md)' });
    if (metrics && metrics.token === undefined) log({ event: 'metrics-refused', url, warning: 'GET /metrics answers 403 beyond loopback without serve.metrics.tokenEnv' });
  }

  let closed: Promise<void> | undefined;
  return {
    url,
    close() {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        const force = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closed;
    },
  };
}

function send(res: http.ServerResponse, reply: Reply): void {
  const text = JSON.stringify(reply.body);
  res.writeHead(reply.status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...(reply.status === 413 ? { Connection: 'close' } : {}),
    ...reply.headers,
  });
  res.end(text);
}

/** After a 413 the client may still be sending: give the response a moment to leave, then drop the socket. */
function hangUp(req: http.IncomingMessage, res: http.ServerResponse): void {
  req.pause();
  res.once('finish', () => setTimeout(() => req.socket.destroy(), 500).unref());
}

/** Reads the body up to `max` bytes; beyond that it stops reading (413) rather than buffering it all. */
async function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) throw new Refusal(413, `body over ${max} bytes`);
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > max) {
        cleanup();
        req.pause();
        reject(new Refusal(413, `body over ${max} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(new Refusal(400, `reading the body failed: ${error.message}`));
    };
    const onClose = (): void => {
      cleanup();
      reject(new Refusal(400, 'client went away before sending the whole body'));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.') || address === '::ffff:127.0.0.1';
}
