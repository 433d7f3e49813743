// A sandbox = agent containers in the network namespace of a sentry container. The sentry is
// started (and unwound if a step fails) before any agent, outlives each agent, and on stop
// flushes its logs; the host ingests its audit records after every agent.
import { existsSync } from 'node:fs';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { openAudit, sealAudit } from '../audit/log.js';
import { type CollectCursor, type CollectOptions, type CollectResult, START_COLLECT_CURSOR, collect, savedCursor } from '../egress/collect.js';
import type { AuditRecord, SandboxTraffic } from '../audit/record.js';
import { ConfigError, LoopboxError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { silentLogger } from '../common/logger.js';
import { type Bind, type DockerClient, sleep } from '../docker/client.js';
import { PACKETS_FILE, frontUdpLine, packetLineWeight, parseCounters, type SentryCounters, streamLines } from '../egress/ingest.js';
import { DNS_QUERIES_FILE } from '../egress/dns-records.js';
import { imageRef } from '../images/catalog.js';
import { EGRESS_NETWORK, MODEL_HOSTNAME, MODEL_NETWORK, ensureNetwork, findModelServer } from '../model/network.js';
import { NO_MODEL_USAGE, type ModelUsage } from '../egress/gateway-records.js';
import { AGENT_UID, ESCALATE_KEY_DIR, ESCALATE_KEY_NAME, type EscalateUpstream, type GatewayLimits, SENTRY_READY, type SandboxIdentity, agentSpec, deadline, sentrySpec } from './specs.js';
import { pack } from 'tar-stream';
import { SHARED_RUN_ID, resourceLabels } from '../docker/labels.js';

export interface SandboxLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

/** An OpenAI-compatible server outside loopbox (`model.endpoint`), resolved on the host. */
export interface ModelEndpoint {
  ip: string;
  port: number;
  names: string[];
}

/** `loopbox sandbox run`: one agent (AgentOptions) in its own sentry (SentryOptions). */
export interface SandboxOptions extends AgentOptions, Omit<SentryOptions, 'image' | 'recordLimit'> {
  /** The sentry's image (`image` is the agent's). */
  sentryImage?: string | undefined;
}

export interface SandboxResult {
  exitCode: number;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
  records: AuditRecord[];
  traffic: SandboxTraffic;
  model: ModelUsage;
  modelReachable: boolean;
}

export type { CollectResult };

/** The defaults of `model.maxRequestBody` and `model.maxTokens` (src/config/schema.ts). */
export const DEFAULT_GATEWAY_LIMITS: GatewayLimits = { maxBodyBytes: 16 * 1024 ** 2, maxTokens: 32768 };

/** uids the sentry's firewall trusts by owner match (images/sentry: lbxgw, lbxdns). */
export const SENTRY_DAEMON_UIDS = [990, 991];

/** Written into a sentry's audit folder once all its records are in the run's audit log. */
const INGESTED_MARK = '.ingested';

export interface SentryOptions extends SandboxIdentity {
  /** Host folder for the sentry's audit files (the sentry writes; the agent never sees it). */
  auditDir: string;
  image?: string | undefined;
  modelEndpoint?: ModelEndpoint | undefined;
  /** Extra `host:port` endpoints the user allows besides the model. */
  allow?: string[] | undefined;
  /** Docker networks the sentry joins too (tests, diagnosis): a route exists, the firewall holds. */
  attachNetworks?: string[] | undefined;
  /** Test-only: no firewall rules at all. */
  noFirewall?: boolean | undefined;
  /** The model gateway's limits; default: DEFAULT_GATEWAY_LIMITS. */
  gateway?: GatewayLimits | undefined;
  /** model.escalate: this sentry's gateway sends every model request to that endpoint instead. */
  escalate?: EscalateOptions | undefined;
  logger?: Logger | undefined;
  /** Environment that locates the state dir (LOOPBOX_STATE_DIR); defaults to process.env. */
  stateEnv?: NodeJS.ProcessEnv | undefined;
  /** Individual audit records per kind and iteration before aggregation (default 1000). */
  recordLimit?: number | undefined;
}

/** An escalated sentry: the endpoint as configured, and the key read on the host. */
export interface EscalateOptions {
  /** Base URL (…/v1), http:// or https://. */
  endpoint: string;
  model: string;
  /** The key the gateway adds as `Authorization: Bearer`; copied into the sentry, never into its env. */
  apiKey?: string | undefined;
  tokenBudget?: number | undefined;
  tokensUsed?: number | undefined;
}

/** model.escalate's URL resolved on the host: what the sentry's firewall and gateway need. */
export async function escalateUpstream(options: EscalateOptions): Promise<EscalateUpstream> {
  const u = new URL(options.endpoint);
  const tls = u.protocol === 'https:';
  const port = Number(u.port || (tls ? 443 : 80));
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const [resolved] = await resolveEndpoints([`${host.includes(':') ? `[${host}]` : host}:${port}`]);
  if (!resolved || isIP(resolved.slice(0, resolved.lastIndexOf(':'))) !== 4) {
    throw new ConfigError(`model.escalate.endpoint ${options.endpoint} resolves to ${resolved ?? 'nothing'}: the sandbox's gateway reaches IPv4 endpoints only.`, [], {
      hint: 'Give an endpoint whose name resolves to an IPv4 address on this host.',
    });
  }
  return { upstream: resolved, host: u.host, tls, base: u.pathname.replace(/\/+$/, ''), model: options.model, tokenBudget: options.tokenBudget, tokensUsed: options.tokensUsed };
}

/** A tar with one root-owned 0400 file: how the key gets into the sentry before it starts. */
async function keyTar(key: string): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', resolve);
    p.on('error', reject);
  });
  p.entry({ name: ESCALATE_KEY_NAME, mode: 0o400, uid: 0, gid: 0, type: 'file' }, `${key}\n`);
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

export interface AgentRun {
  exitCode: number;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
}

/**
 * The network namespace agents run in: its firewall, DNS responder and audit files. A loop
 * keeps one per run and runs each iteration's agent in it; `collect()` after each agent
 * attributes exactly what was logged since the last collect (by counters and file offsets,
 * never by clock) to that iteration.
 */
export class Sentry {
  private cursor: CollectCursor = START_COLLECT_CURSOR;
  private stopped = false;
  private lastIdentity: SandboxIdentity | undefined;

  private constructor(
    private readonly docker: DockerClient,
    readonly id: string,
    readonly image: string,
    readonly auditDir: string,
    readonly dnsHosts: Record<string, string>,
    readonly modelIp: string | undefined,
    private readonly modelTarget: { ip: string; port: number } | undefined,
    private readonly options: SentryOptions,
    /** Its gateway sends the agent's model requests to model.escalate's endpoint. */
    readonly escalated = false,
  ) {}

  get modelReachable(): boolean {
    return this.modelIp !== undefined;
  }

  static async start(docker: DockerClient, options: SentryOptions): Promise<Sentry> {
    const log = options.logger ?? silentLogger;
    const image = options.image ?? imageRef('sentry');
    await requireImage(docker, image);
    await ensureNetwork(docker, MODEL_NETWORK, true);
    const model = options.modelEndpoint ?? (await findModelServer(docker));
    const dnsHosts: Record<string, string> = {};
    if (model) {
      dnsHosts[MODEL_HOSTNAME] = model.ip;
      for (const name of options.modelEndpoint?.names ?? []) dnsHosts[name] = model.ip;
      if (isIP(model.ip) !== 4) {
        throw new ConfigError(`The model at ${model.ip} is not an IPv4 address; the sandbox's model gateway reaches IPv4 endpoints only.`, [], {
          hint: 'Give model.endpoint as an IPv4 address or a name that resolves to one.',
        });
      }
    }
    // The model is not an allowed endpoint: only the gateway's uid reaches it (issue 8, item 1).
    const modelTarget = model ? endpoint(model.ip, model.port) : undefined;
    if (options.escalate && !model) {
      throw new ConfigError('model.escalate needs a model gateway, and no model server is running.', [], { hint: 'Start one with `loopbox model up`, or set model.endpoint.' });
    }
    const escalate = options.escalate ? await escalateUpstream(options.escalate) : undefined;
    // Neither the model nor the escalation endpoint is an allowed endpoint: only the gateway's
    // uid reaches them (issue 8, item 1; issue 20).
    const allow = (await resolveEndpoints(options.allow ?? [])).filter((e) => e !== modelTarget && e !== escalate?.upstream);
    // An outside model server needs a route: it counts as an extra endpoint (see below).
    const extras = [...allow, ...(options.modelEndpoint ? [endpoint(options.modelEndpoint.ip, options.modelEndpoint.port)] : []), ...(escalate ? [escalate.upstream] : [])];
    const identity: SandboxIdentity = { runId: options.runId, task: options.task, iteration: options.iteration };
    await openAudit(options.runId, options.stateEnv);
    await recoverAuditDir(options.auditDir, identity, Object.keys(dnsHosts), options.stateEnv, options.recordLimit);
    // The sentry runs as root in its container; the folder is the host's, so the host can read
    // and delete what it writes.
    await mkdir(options.auditDir, { recursive: true });
    await chmod(options.auditDir, 0o777);
    const id = await docker.createContainer(
      sentrySpec({ ...identity, image, auditDir: options.auditDir, allow, dnsHosts, model: modelTarget, gateway: options.gateway ?? DEFAULT_GATEWAY_LIMITS, escalate, noFirewall: options.noFirewall }),
    );
    try {
      // The key goes into the created sentry as a root-only file, not into its env (which
      // `docker inspect` shows): the gateway reads it as root before it drops to its uid, and
      // the entrypoint deletes it (docs/security-model.md).
      if (escalate && options.escalate?.apiKey) await docker.putArchive(id, await keyTar(options.escalate.apiKey), ESCALATE_KEY_DIR);
      // Endpoints outside the model network need a route: only then does the sentry join a
      // plain bridge, and the firewall alone decides (docs/security-model.md).
      if (extras.length) {
        await ensureNetwork(docker, EGRESS_NETWORK, false);
        await docker.connectNetwork(EGRESS_NETWORK, id);
      }
      for (const network of options.attachNetworks ?? []) await docker.connectNetwork(network, id);
      await docker.start(id);
      await docker.waitForLog(id, SENTRY_READY, 30_000, image, 'sentry');
    } catch (error) {
      await docker.remove(id);
      throw error;
    }
    log.debug({ sentry: id.slice(0, 12), allow, escalate: escalate ? { upstream: escalate.upstream, model: escalate.model } : undefined }, 'sentry ready');
    return new Sentry(docker, id, image, options.auditDir, dnsHosts, model?.ip, model ? { ip: model.ip, port: model.port } : undefined, options, escalate !== undefined);
  }

  /** Attributes what the sentry logged since the last collect to `identity`, into the audit log. */
  async collect(identity: SandboxIdentity): Promise<CollectResult> {
    this.lastIdentity = identity;
    const counters = this.stopped ? undefined : await readCounters(this.docker, this.id).catch(() => undefined);
    // NFLOG reaches the packet logger, and a query the DNS front's socket, asynchronously:
    // wait (bounded) until the records the counters announce are written; what never comes is
    // reported lost. Each poll reads only what was written since the previous poll.
    if (counters) await this.awaitRecords(counters);
    const read = await collect(this.auditDir, this.cursor, this.collectOptions(identity, counters));
    this.cursor = read.cursor;
    return read.result;
  }

  private collectOptions(identity: SandboxIdentity, counters: SentryCounters | undefined): CollectOptions {
    return { identity, counters, answered: Object.keys(this.dnsHosts), model: this.modelTarget, stateEnv: this.options.stateEnv, recordLimit: this.options.recordLimit };
  }

  private async awaitRecords(counters: SentryCounters): Promise<void> {
    const deadline = Date.now() + 2000;
    const before = this.cursor.audit.counters;
    const packets = { count: 0, bytes: this.cursor.audit.packetBytes };
    const wantPackets = counters.logged.packets - before.logged.packets;
    const front = { count: 0, bytes: this.cursor.audit.dnsFrontBytes ?? 0 };
    // What the kernel dropped at the front's socket will never be written: do not wait for it.
    const wantFront = (counters.dns?.udp ?? 0) - (before.dns?.udp ?? 0) - ((counters.dns?.drops ?? 0) - (before.dns?.drops ?? 0));
    for (;;) {
      packets.bytes += (await streamLines(path.join(this.auditDir, PACKETS_FILE), packets.bytes, (line) => (packets.count += packetLineWeight(line)))).bytes;
      front.bytes += (await streamLines(path.join(this.auditDir, DNS_QUERIES_FILE), front.bytes, (line) => (front.count += frontUdpLine(line)))).bytes;
      if ((packets.count >= wantPackets && front.count >= wantFront) || Date.now() >= deadline) return;
      await sleep(20);
    }
  }

  /**
   * Stops the sentry (SIGTERM flushes its logs), attributes anything that arrived after the
   * last collect to the last identity, seals the audit log with a checkpoint, and removes the
   * sentry; idempotent. The folder is marked ingested only when that last read reached the
   * log: otherwise `--resume` ingests it (issue 8.3).
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const counters = await readCounters(this.docker, this.id).catch(() => undefined);
    await this.docker.stop(this.id, 5).catch(() => undefined);
    const identity = this.lastIdentity ?? { runId: this.options.runId, task: this.options.task, iteration: this.options.iteration };
    let ingested = false;
    try {
      this.cursor = (await collect(this.auditDir, this.cursor, this.collectOptions(identity, counters))).cursor;
      ingested = true;
    } catch (error) {
      (this.options.logger ?? silentLogger).warn({ error: String(error), auditDir: this.auditDir }, 'audit files not ingested: kept for --resume');
    }
    await sealAudit(identity.runId, this.options.stateEnv).catch(() => undefined);
    await this.docker.remove(this.id);
    if (ingested) await writeFile(path.join(this.auditDir, INGESTED_MARK), '').catch(() => undefined);
  }
}

/** One agent container: what it runs, as whom, with which files and limits. */
export interface AgentOptions extends SandboxIdentity {
  cmd: string[];
  entrypoint?: string[] | undefined;
  /** `uid:gid` the agent runs as (non-root); default 1000:1000. */
  user?: string | undefined;
  image?: string | undefined;
  env?: Record<string, string> | undefined;
  binds?: Bind[] | undefined;
  workingDir?: string | undefined;
  limits: SandboxLimits;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  stdout?: Writable | undefined;
  stderr?: Writable | undefined;
}

/** Runs one agent container in the sentry's namespace, streams its output, removes it. */
export async function runAgent(docker: DockerClient, sentry: Sentry, options: AgentOptions): Promise<AgentRun> {
  const uid = Number((options.user ?? '').split(':')[0]);
  if (SENTRY_DAEMON_UIDS.includes(uid)) {
    // The firewall trusts these uids by owner match: an agent running as one would reach the
    // model past the gateway, or dnsmasq past the DNS front.
    throw new ConfigError(`The agent cannot run as uid ${uid}: the sentry's model gateway (990) and DNS front (991) own those uids in its namespace.`, [], {
      hint: 'Run loopbox as another user, or pass another --user.',
    });
  }
  const image = options.image ?? imageRef('agent');
  const found = await requireImage(docker, image);
  const started = Date.now();
  const agentId = await docker.createContainer(
    agentSpec({
      runId: options.runId,
      task: options.task,
      iteration: options.iteration,
      image,
      sentryId: sentry.id,
      cmd: options.cmd,
      // The image's own entrypoint still runs, under the container's deadline.
      entrypoint: options.entrypoint ?? found.entrypoint,
      timeoutMs: options.timeoutMs,
      user: options.user,
      env: options.env,
      binds: options.binds ?? [],
      workingDir: options.workingDir,
      memoryBytes: options.limits.memoryBytes,
      cpus: options.limits.cpus,
      pids: options.limits.pids,
    }),
  );
  try {
    const streams = await docker.attach(agentId);
    if (options.stdout) streams.stdout.pipe(options.stdout, { end: false });
    else streams.stdout.resume();
    if (options.stderr) streams.stderr.pipe(options.stderr, { end: false });
    else streams.stderr.resume();
    if (options.signal?.aborted) return { exitCode: -1, timedOut: false, aborted: true, durationMs: 0 };
    const result = await docker.startAndWait(agentId, options.timeoutMs, options.signal);
    // Let the attached streams drain what the agent wrote last.
    await streams.drained(1000);
    return { ...result, aborted: options.signal?.aborted ?? false, durationMs: Date.now() - started };
  } finally {
    await docker.remove(agentId);
  }
}

/** One command in a fresh sandbox (`loopbox sandbox run`): its own sentry, one agent, audit. */
export async function runSandbox(docker: DockerClient, options: SandboxOptions): Promise<SandboxResult> {
  const id: SandboxIdentity = { runId: options.runId, task: options.task, iteration: options.iteration };
  await requireImage(docker, options.image ?? imageRef('agent'));
  const sentry = await Sentry.start(docker, {
    ...id,
    auditDir: options.auditDir,
    image: options.sentryImage,
    modelEndpoint: options.modelEndpoint,
    allow: options.allow,
    attachNetworks: options.attachNetworks,
    noFirewall: options.noFirewall,
    gateway: options.gateway,
    logger: options.logger,
    stateEnv: options.stateEnv,
  });
  let run: AgentRun | undefined;
  let collected: CollectResult | undefined;
  try {
    run = await runAgent(docker, sentry, { ...options, ...id });
  } finally {
    collected = await sentry.collect(id).catch(() => undefined);
    await sentry.stop();
  }
  return {
    ...run,
    records: collected?.records ?? [],
    traffic: collected?.traffic ?? { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0 },
    model: collected?.model ?? NO_MODEL_USAGE,
    modelReachable: sentry.modelReachable,
  };
}

async function requireImage(docker: DockerClient, ref: string): Promise<{ entrypoint: string[] }> {
  const found = await docker.findImage(ref);
  if (!found) throw new LoopboxError(`Image ${ref} is not built.`, { hint: 'Run `loopbox images build` first.' });
  return found;
}

/**
 * A folder from a sentry whose run crashed before its records were all ingested: ingest the
 * rest now (from the saved cursor; with no counters, loss cannot be judged), then start clean.
 */
export async function recoverAuditDir(dir: string, identity: SandboxIdentity, answered: string[], env?: NodeJS.ProcessEnv, recordLimit?: number): Promise<void> {
  if (!existsSync(dir)) return;
  if (!existsSync(path.join(dir, INGESTED_MARK))) {
    // If this throws, the folder stays: its raw files are deleted only once their records are
    // on disk in audit.jsonl (appendAudit fsyncs before it resolves). With no counters, loss
    // cannot be judged.
    await collect(dir, await savedCursor(dir), { identity, counters: undefined, answered, stateEnv: env, recordLimit });
  }
  await rm(dir, { recursive: true, force: true });
}

async function readCounters(docker: DockerClient, sentryId: string): Promise<SentryCounters | undefined> {
  const result = await docker.exec(sentryId, ['/usr/local/bin/loopbox-sentry-counters']);
  return result.exitCode === 0 ? parseCounters(result.stdout) : undefined;
}

/** `ip:port`, with IPv6 addresses in brackets as the sentry expects (`[fd00::1]:8080`). */
export function endpoint(ip: string, port: number): string {
  return isIP(ip) === 6 ? `[${ip}]:${port}` : `${ip}:${port}`;
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
      out.push(endpoint(host, port));
      continue;
    }
    try {
      const { address } = await lookup(host);
      out.push(endpoint(address, port));
    } catch {
      throw new ConfigError(`Allowed endpoint ${entry}: cannot resolve ${host} on this host.`);
    }
  }
  return out;
}

const toolsChecked = new Set<string>();

/**
 * Agent and verify containers enforce their own deadline with coreutils `timeout` and
 * util-linux `setpriv` (see `deadline()` in specs.ts). An image without them would fail every
 * iteration with exit 127; say so once, before any loop starts. Checked once per image and
 * process, in a throwaway container with no network.
 */
export async function checkDeadlineTools(docker: DockerClient, image: string): Promise<void> {
  if (toolsChecked.has(image)) return;
  await requireImage(docker, image);
  const limit = deadline(['true'], `${AGENT_UID}:${AGENT_UID}`, 5000);
  const id = await docker.createContainer({
    image,
    entrypoint: limit.entrypoint,
    cmd: limit.cmd,
    user: limit.user,
    capDrop: ['ALL'],
    capAdd: limit.capAdd,
    securityOpt: ['no-new-privileges'],
    networkMode: 'none',
    labels: resourceLabels({ runId: SHARED_RUN_ID, role: 'test' }),
  });
  let output = '';
  try {
    const streams = await docker.attach(id);
    streams.stdout.on('data', (c: Buffer) => (output += c.toString('utf8')));
    streams.stderr.on('data', (c: Buffer) => (output += c.toString('utf8')));
    const result = await docker.startAndWait(id, 30_000).catch((error: unknown) => ({ exitCode: -1, timedOut: false, error }));
    await streams.drained(1000);
    if (result.exitCode !== 0) {
      throw new ConfigError(`The image ${image} cannot run loopbox's in-container deadline (coreutils \`timeout\` and util-linux \`setpriv\`): exit ${result.exitCode}${output.trim() ? `: ${output.trim().split('\n').slice(-2).join(' ')}` : ''}`, [], {
        hint: 'Build the image FROM loopbox/agent (or any Debian or Ubuntu base, which has both), or install coreutils and util-linux in it.',
      });
    }
  } finally {
    await docker.remove(id);
  }
  toolsChecked.add(image);
}

export function sandboxAuditDir(runDirPath: string, iteration?: number): string {
  return path.join(runDirPath, 'sandboxes', iteration === undefined ? 'adhoc' : `i${iteration}`);
}
