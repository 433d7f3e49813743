// One sandbox = one agent container in the network namespace of its own sentry container.
// Start-up unwinds what it made when a later step fails; teardown always reads the sentry's
// counters, stops it (flushing its logs), ingests the audit records and removes both.
import { existsSync } from 'node:fs';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { appendAudit } from '../audit/log.js';
import type { AuditRecord, SandboxTraffic } from '../audit/record.js';
import { ConfigError, LoopboxError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { silentLogger } from '../common/logger.js';
import type { Bind, DockerClient } from '../docker/client.js';
import { ingestSandboxAudit, parseCounters, type SentryCounters } from '../egress/ingest.js';
import { imageRef } from '../images/catalog.js';
import { EGRESS_NETWORK, MODEL_HOSTNAME, MODEL_NETWORK, ensureNetwork, findModelServer } from '../model/network.js';
import { SENTRY_READY, type SandboxIdentity, agentSpec, sentrySpec } from './specs.js';

export interface SandboxLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

export interface SandboxOptions extends SandboxIdentity {
  cmd: string[];
  entrypoint?: string[] | undefined;
  /** `uid:gid` the agent runs as (non-root); default 1000:1000. */
  user?: string | undefined;
  /** Host folder for this sandbox's audit files (the sentry writes; the agent never sees it). */
  auditDir: string;
  image?: string | undefined;
  sentryImage?: string | undefined;
  env?: Record<string, string> | undefined;
  binds?: Bind[];
  workingDir?: string | undefined;
  limits: SandboxLimits;
  /** An OpenAI-compatible server outside loopbox (`model.endpoint`), resolved on the host. */
  modelEndpoint?: { ip: string; port: number; names: string[] } | undefined;
  /** Extra `host:port` endpoints the user allows besides the model. */
  allow?: string[];
  /** Docker networks the sentry joins too (tests, diagnosis): a route exists, the firewall holds. */
  attachNetworks?: string[];
  /** Test-only: no firewall rules at all. */
  noFirewall?: boolean;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  stdout?: Writable;
  stderr?: Writable;
  logger?: Logger;
  /** Environment that locates the state dir (LOOPBOX_STATE_DIR); defaults to process.env. */
  stateEnv?: NodeJS.ProcessEnv;
}

export interface SandboxResult {
  exitCode: number;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
  records: AuditRecord[];
  traffic: SandboxTraffic;
  modelReachable: boolean;
}

/** Written into a sandbox's audit folder once its records are in the run's audit log. */
const INGESTED_MARK = '.ingested';

export async function runSandbox(docker: DockerClient, options: SandboxOptions): Promise<SandboxResult> {
  const log = options.logger ?? silentLogger;
  const id: SandboxIdentity = { runId: options.runId, task: options.task, iteration: options.iteration };
  const image = options.image ?? imageRef('agent');
  const sentryImage = options.sentryImage ?? imageRef('sentry');
  for (const ref of [image, sentryImage]) {
    if (!(await docker.findImage(ref))) {
      throw new LoopboxError(`Image ${ref} is not built.`, { hint: 'Run `loopbox images build` first.' });
    }
  }
  await ensureNetwork(docker, MODEL_NETWORK, true);
  const model = options.modelEndpoint ?? (await findModelServer(docker));
  const allow: string[] = [];
  const dnsHosts: Record<string, string> = {};
  if (model) {
    allow.push(`${model.ip}:${model.port}`);
    dnsHosts[MODEL_HOSTNAME] = model.ip;
    for (const name of options.modelEndpoint?.names ?? []) dnsHosts[name] = model.ip;
  }
  // An outside model server needs a route: it counts as an extra endpoint (see below).
  const extras = [...(await resolveEndpoints(options.allow ?? [])), ...(options.modelEndpoint ? [`${options.modelEndpoint.ip}:${options.modelEndpoint.port}`] : [])];
  for (const e of extras) if (!allow.includes(e)) allow.push(e);

  // A folder from an attempt that crashed before its records were ingested: ingest them now
  // (the crash left no counters, so loss cannot be judged), then start clean.
  if (existsSync(options.auditDir)) {
    if (!existsSync(path.join(options.auditDir, INGESTED_MARK))) {
      const leftover = await ingestSandboxAudit(options.auditDir, id, 'agent', undefined, Object.keys(dnsHosts));
      await appendAudit(options.runId, leftover.records, options.stateEnv);
    }
    await rm(options.auditDir, { recursive: true, force: true });
  }
  await mkdir(options.auditDir, { recursive: true });
  // The sentry runs as root in its container; the folder is the host's, so the host can read
  // and delete what it writes.
  await chmod(options.auditDir, 0o777);

  const started = Date.now();
  const cleanup: Array<() => Promise<void>> = [];
  let sentryId: string | undefined;
  let counters: SentryCounters | undefined;
  let exitCode = -1;
  let timedOut = false;
  try {
    sentryId = await docker.createContainer(sentrySpec({ ...id, image: sentryImage, auditDir: options.auditDir, allow, dnsHosts, noFirewall: options.noFirewall }));
    const sentry = sentryId;
    cleanup.push(() => docker.remove(sentry));
    // Endpoints outside the model network need a route: only then does the sentry join a plain
    // bridge, and the firewall alone decides (docs/security-model.md).
    if (extras.length) {
      await ensureNetwork(docker, EGRESS_NETWORK, false);
      await docker.connectNetwork(EGRESS_NETWORK, sentry);
    }
    for (const network of options.attachNetworks ?? []) await docker.connectNetwork(network, sentry);
    await docker.start(sentry);
    await docker.waitForLog(sentry, SENTRY_READY, 30_000, sentryImage, 'sentry');
    log.debug({ sentry: sentry.slice(0, 12), allow }, 'sentry ready');

    const agentId = await docker.createContainer(
      agentSpec({
        ...id,
        image,
        sentryId: sentry,
        cmd: options.cmd,
        entrypoint: options.entrypoint,
        user: options.user,
        env: options.env,
        binds: options.binds ?? [],
        workingDir: options.workingDir,
        memoryBytes: options.limits.memoryBytes,
        cpus: options.limits.cpus,
        pids: options.limits.pids,
      }),
    );
    cleanup.push(() => docker.remove(agentId));
    const streams = await docker.attach(agentId);
    if (options.stdout) streams.stdout.pipe(options.stdout, { end: false });
    else streams.stdout.resume();
    if (options.stderr) streams.stderr.pipe(options.stderr, { end: false });
    else streams.stderr.resume();
    if (options.signal?.aborted) throw new LoopboxError('aborted before the agent started');
    await docker.start(agentId);
    const result = await docker.wait(agentId, options.timeoutMs, options.signal);
    exitCode = result.exitCode;
    timedOut = result.timedOut;
    // Let the attached streams drain what the agent wrote last.
    await streams.drained(1000);
  } finally {
    // The agent goes at once; meanwhile the sentry's counters are read and it is stopped
    // (SIGTERM flushes its logs), then it goes too.
    const [removeSentry, ...others] = cleanup;
    const agentGone = Promise.all(others.map((step) => step().catch((error: unknown) => log.warn({ error }, 'cleanup step failed'))));
    if (sentryId) {
      counters = await readCounters(docker, sentryId).catch(() => undefined);
      await docker.stop(sentryId, 5).catch(() => undefined);
    }
    await agentGone;
    await removeSentry?.().catch((error: unknown) => log.warn({ error }, 'cleanup step failed'));
  }
  const ingest = await ingestSandboxAudit(options.auditDir, id, 'agent', counters, Object.keys(dnsHosts));
  await appendAudit(options.runId, ingest.records, options.stateEnv);
  await writeFile(path.join(options.auditDir, INGESTED_MARK), '');
  return {
    exitCode,
    timedOut,
    aborted: options.signal?.aborted ?? false,
    durationMs: Date.now() - started,
    records: ingest.records,
    traffic: ingest.traffic,
    modelReachable: Boolean(model),
  };
}

async function readCounters(docker: DockerClient, sentryId: string): Promise<SentryCounters | undefined> {
  const result = await docker.exec(sentryId, ['/usr/local/bin/loopbox-sentry-counters']);
  return result.exitCode === 0 ? parseCounters(result.stdout) : undefined;
}

/** `host:port` → `ip:port`, resolved on the host (the sandbox has no outside DNS). */
export async function resolveEndpoints(entries: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const entry of entries) {
    const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(entry);
    if (!m) throw new ConfigError(`Allowed endpoint ${JSON.stringify(entry)} is not host:port.`);
    const host = m[1] ?? m[2]!;
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw new ConfigError(`Allowed endpoint ${entry}: port ${port} is out of range.`);
    if (isIP(host)) {
      out.push(`${host}:${port}`);
      continue;
    }
    try {
      const { address } = await lookup(host);
      out.push(`${address}:${port}`);
    } catch {
      throw new ConfigError(`Allowed endpoint ${entry}: cannot resolve ${host} on this host.`);
    }
  }
  return out;
}

export function sandboxAuditDir(runDirPath: string, iteration?: number): string {
  return path.join(runDirPath, 'sandboxes', iteration === undefined ? 'adhoc' : `i${iteration}`);
}
