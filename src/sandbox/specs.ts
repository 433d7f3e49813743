// Container specs for a sandbox: pure functions, so the hardening is easy to read and unit-test.
import type { Bind, ContainerSpec } from '../docker/client.js';
import type { SandboxIdentity } from '../audit/record.js';
import { containerName, resourceLabels } from '../docker/labels.js';
import { MODEL_HOSTNAME, MODEL_NETWORK, MODEL_PORT } from '../model/network.js';

export const AGENT_UID = 1000;
export const AGENT_HOME = '/home/agent';
export const SENTRY_READY = /^loopbox-sentry: ready$/m;

export type { SandboxIdentity };

export interface SentrySpecInput extends SandboxIdentity {
  image: string;
  auditDir: string;
  /** TCP `ip:port` the namespace may reach (the model and user extras). */
  allow: string[];
  /** Names the sentry's DNS answers, `name -> ip`; everything else is NXDOMAIN. */
  dnsHosts: Record<string, string>;
  /** The model's `ip:port`: only the sentry's gateway may reach it; the agent is sent there. */
  model?: string | undefined;
  gateway?: GatewayLimits | undefined;
  /** model.escalate, resolved: the gateway sends every request there (never carries the key). */
  escalate?: EscalateUpstream | undefined;
  /** Test-only: start without firewall rules, to show the internal network is a wall too. */
  noFirewall?: boolean;
}

/** What the sentry's model gateway lets through (docs/configuration.md, `model.*`). */
export interface GatewayLimits {
  maxBodyBytes: number;
  maxTokens: number;
  /** Tokens (uncached prompt + completion) the loop may still use in all; none = no budget. */
  tokenBudget?: number | undefined;
  /** Tokens the loop used before this sentry started (resume, a new sentry). */
  tokensUsed?: number | undefined;
}

/** Where an escalated sentry's gateway sends the agent's model requests (issue 20). */
export interface EscalateUpstream {
  /** `ipv4:port`, resolved on the host: the only address the gateway's uid may reach for it. */
  upstream: string;
  /** The URL's host name: the Host header and, with TLS, the name the certificate must carry. */
  host: string;
  tls: boolean;
  /** The URL's path (`/v1`): the agent's `/v1/...` requests go to `<base>/...`. */
  base: string;
  model: string;
  /** Escalated tokens in all (uncached prompt + completion); past it the gateway answers 429. */
  tokenBudget?: number | undefined;
  /** Escalated tokens used before this sentry started. */
  tokensUsed?: number | undefined;
}

/** Where the host puts the escalation key in a created sentry (docs/security-model.md). */
export const ESCALATE_KEY_DIR = '/run';
export const ESCALATE_KEY_NAME = 'loopbox-escalate.key';

export function sentrySpec(input: SentrySpecInput): ContainerSpec {
  const env: Record<string, string> = {
    LOOPBOX_ALLOW: input.allow.join(' '),
    LOOPBOX_DNS_HOSTS: Object.entries(input.dnsHosts)
      .map(([name, ip]) => `${name}=${ip}`)
      .join(' '),
  };
  if (input.model) env.LOOPBOX_MODEL = input.model;
  if (input.gateway) {
    env.LOOPBOX_GW_MAX_BODY = String(input.gateway.maxBodyBytes);
    env.LOOPBOX_GW_MAX_TOKENS = String(input.gateway.maxTokens);
    if (input.gateway.tokenBudget !== undefined) env.LOOPBOX_GW_TOKEN_BUDGET = String(input.gateway.tokenBudget);
    if (input.gateway.tokensUsed !== undefined) env.LOOPBOX_GW_TOKENS_USED = String(input.gateway.tokensUsed);
  }
  if (input.escalate) {
    const e = input.escalate;
    env.LOOPBOX_GW_ESCALATE = e.upstream;
    env.LOOPBOX_GW_ESCALATE_HOST = e.host;
    env.LOOPBOX_GW_ESCALATE_TLS = e.tls ? '1' : '0';
    env.LOOPBOX_GW_ESCALATE_BASE = e.base;
    env.LOOPBOX_GW_ESCALATE_MODEL = e.model;
    if (e.tokenBudget !== undefined) env.LOOPBOX_GW_ESCALATE_BUDGET = String(e.tokenBudget);
    if (e.tokensUsed !== undefined) env.LOOPBOX_GW_ESCALATE_USED = String(e.tokensUsed);
  }
  if (input.noFirewall) env.LOOPBOX_NO_FIREWALL = '1';
  return {
    name: containerName(input, 'sentry'),
    image: input.image,
    labels: resourceLabels({ ...input, role: 'sentry' }),
    networkMode: MODEL_NETWORK,
    env,
    capDrop: ['ALL'],
    // For the set-up only (images/sentry/entrypoint.sh): NET_ADMIN installs the firewall and
    // binds NFLOG, NET_BIND_SERVICE lets dnsmasq and the gateway bind ports the agent cannot
    // (the unprivileged port floor is 1024 again, below), SETUID/SETGID let
    // each daemon become its own user, CHOWN lets dnsmasq hand its log file to that user. Once
    // set up, no process of the sentry holds any capability (docs/security-model.md).
    capAdd: ['NET_ADMIN', 'NET_BIND_SERVICE', 'SETUID', 'SETGID', 'CHOWN'],
    securityOpt: ['no-new-privileges'],
    // Docker's embedded resolver (127.0.0.11) forwards unknown names to this server, from
    // inside the namespace: our DNS responder on loopback, which logs and answers NXDOMAIN.
    dns: ['127.0.0.1'],
    // Let unprivileged ping sockets exist so an ICMP attempt reaches the firewall and is logged.
    // Ports below 1024 are privileged again (Docker 20.10+ sets the floor to 0 by default): the
    // agent, which shares this namespace, cannot bind dnsmasq's :53 or the gateway's :81 and
    // take their traffic (issue 8, item 2).
    sysctls: { 'net.ipv4.ping_group_range': '0 2147483647', 'net.ipv4.ip_unprivileged_port_start': '1024' },
    binds: [{ host: input.auditDir, container: '/audit', readOnly: false }],
    readonlyRootfs: false,
    pidsLimit: 64,
    memoryBytes: 128 * 1024 ** 2,
  };
}

export interface AgentSpecInput extends SandboxIdentity {
  image: string;
  sentryId: string;
  cmd: string[];
  entrypoint?: string[] | undefined;
  user?: string | undefined;
  env?: Record<string, string> | undefined;
  binds: Bind[];
  workingDir?: string | undefined;
  memoryBytes: number;
  cpus: number;
  pids: number;
  /** The host's timeout for the command; the container's own deadline is this plus a grace. */
  timeoutMs?: number | undefined;
  role?: 'agent';
}

/** Without a timeout (ad-hoc `sandbox run` without --timeout), the container still ends. */
export const DEFAULT_AGENT_DEADLINE_MS = 24 * 3600 * 1000;

/** How long past the host's own timeout a container's init waits before it ends the command. */
export const DEADLINE_GRACE_MS = 15_000;

export interface Deadline {
  entrypoint: string[];
  cmd: string[];
  user: string;
  capAdd: string[];
}

/**
 * The deadline inside the container, so that nothing outlives it even when loopbox dies: the
 * container starts as root with only SETUID, SETGID and KILL; Docker's init (pid 1) runs
 * `timeout`, which drops to the unprivileged `user` with `setpriv` and SIGKILLs the command at
 * `limitMs` + grace. When `timeout` exits, pid 1 exits and the kernel ends every process in the
 * container. The command runs as another uid with no capabilities: it cannot signal, stop or
 * ptrace `timeout` or pid 1. Needs coreutils and util-linux (setpriv) in the image.
 */
export function deadline(argv: string[], user: string, limitMs: number): Deadline {
  const [uid, gid = uid] = user.split(':');
  const seconds = Math.ceil((limitMs + DEADLINE_GRACE_MS) / 1000);
  return {
    entrypoint: ['timeout', '--signal=KILL', `${seconds}s`, 'setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--inh-caps=-all', '--'],
    cmd: argv,
    user: '0:0',
    capAdd: ['SETUID', 'SETGID', 'KILL'],
  };
}

export function agentSpec(input: AgentSpecInput): ContainerSpec {
  const user = input.user ?? `${AGENT_UID}:${AGENT_UID}`;
  const [uid, gid = uid] = user.split(':');
  const limit = deadline([...(input.entrypoint ?? []), ...input.cmd], user, input.timeoutMs ?? DEFAULT_AGENT_DEADLINE_MS);
  return {
    name: containerName(input, 'agent'),
    image: input.image,
    entrypoint: limit.entrypoint,
    cmd: limit.cmd,
    capAdd: limit.capAdd,
    // Nothing to collect from the container after it exits (output is streamed): Docker
    // removes it, so an agent whose loopbox died leaves nothing behind once its deadline hits.
    autoRemove: true,
    labels: resourceLabels({ ...input, role: 'agent' }),
    // The agent has no network of its own: it lives in the sentry's namespace and its rules.
    networkMode: `container:${input.sentryId}`,
    user: limit.user,
    env: {
      HOME: AGENT_HOME,
      LOOPBOX_MODEL_URL: `http://${MODEL_HOSTNAME}:${MODEL_PORT}/v1`,
      LOOPBOX_RUN_ID: input.runId,
      ...(input.task ? { LOOPBOX_TASK: input.task } : {}),
      ...(input.iteration !== undefined ? { LOOPBOX_ITERATION: String(input.iteration) } : {}),
      ...input.env,
    },
    workingDir: input.workingDir,
    capDrop: ['ALL'],
    securityOpt: ['no-new-privileges'],
    readonlyRootfs: true,
    tmpfs: {
      '/tmp': 'rw,nosuid,nodev,size=512m',
      // Owned by the agent's uid: a root-owned HOME breaks agents that write ~/.local.
      [AGENT_HOME]: `rw,nosuid,nodev,size=512m,uid=${uid},gid=${gid},mode=0700`,
    },
    binds: input.binds,
    pidsLimit: input.pids,
    memoryBytes: input.memoryBytes,
    nanoCpus: Math.round(input.cpus * 1e9),
    init: true,
  };
}

