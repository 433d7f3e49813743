// One audit record per blocked attempt (docs/audit-log.md documents every field). Records are
// written by the host, from files the sentry wrote, into the run's `audit.jsonl`: the agent
// never mounts either.

/** The run's audit log, in its run directory. */
export const AUDIT_FILE = 'audit.jsonl';

/** Whose traffic a record is about: the run, and where known the task and iteration. */
export interface SandboxIdentity {
  runId: string;
  task?: string | undefined;
  iteration?: number | undefined;
}

/** Which records a query over the audit logs wants. */
export interface AuditQuery {
  runId?: string | undefined;
  task?: string | undefined;
  since?: Date | undefined;
}

export type AuditKind = 'packet' | 'dns' | 'loss' | 'model-denied' | 'model-escalated' | 'review';

export interface AuditRecord {
  /** UTC time the sentry saw the attempt, ISO 8601 with milliseconds. */
  time: string;
  runId: string;
  task: string | null;
  iteration: number | null;
  /** Which sandbox role the attempt is attributed to (the namespace owner): `agent`. */
  role: string;
  kind: AuditKind;
  /** `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number as a string; `dns` for queries. */
  protocol: string | null;
  family: 'ipv4' | 'ipv6' | null;
  direction: 'out' | 'in' | null;
  src: string | null;
  srcPort: number | null;
  dst: string | null;
  dstPort: number | null;
  /** uid of the sending process inside the sandbox, when the kernel knows it. */
  uid: number | null;
  /** DNS query name and type, for `kind: dns`; for `model-denied`, the HTTP path and method. */
  query: string | null;
  queryType: string | null;
  icmpType: number | null;
  /**
   * `rejected` (firewall), `nxdomain` (DNS), `lost` (records the logger dropped), `denied` (model
   * gateway), `allowed` (a request the host itself sent out: the reviewer, kind `review`; or one
   * the gateway sent to the escalation endpoint, kind `model-escalated`).
   */
  verdict: 'rejected' | 'nxdomain' | 'lost' | 'denied' | 'allowed';
  /** The firewall rule (NFLOG prefix) or `dns`; for `loss`, the counters that show it. */
  rule: string;
  /** Number of attempts this record stands for: 1, except for `loss` and aggregate records. */
  count: number;
  /**
   * Set on an aggregate record: past the per-iteration limit of records of one kind, further
   * attempts are counted into one record instead of written one by one (docs/audit-log.md).
   * Stored as null on every other record.
   */
  aggregate?: AuditAggregate | null;
  /** Set on `kind: review`: what one request to the reviewer sent and got (docs/audit-log.md). */
  review?: ReviewTraffic;
  /** Set on `kind: model-escalated`: one request the gateway sent to model.escalate's endpoint. */
  escalation?: EscalationTraffic;
  /**
   * Set on a `dns` record whose question could not be read whole (malformed, truncated, a
   * pointer loop): what was wrong. `query` then holds what could be read, or null.
   */
  dnsError?: string;
  /** With `dnsError`: the first 256 bytes of the DNS message, hex (the bytes are the evidence). */
  payload?: string;
  /** Set on `kind: loss`: which counter shows the attempts no record stands for (docs/audit-log.md). */
  loss?: AuditLoss;
}

/**
 * Attempts a counter saw that no record stands for: the firewall rule's (or the DNS front's
 * port's) packet counter against the records that arrived from its logger, in one read.
 */
export interface AuditLoss {
  /** `nflog`: the packet logger (per NFLOG rule); `dns-front`: the DNS front's socket; `malformed`: lines that were not records. */
  source: 'nflog' | 'dns-front' | 'malformed';
  /** What the counter saw in this read, and how many records arrived for it. */
  counted: number;
  recorded: number;
  /** Of the lost, how many the kernel says it dropped (NFLOG sequence gaps, the socket's drop counter). */
  kernelDropped: number;
}

/** One request the host sent to the reviewer endpoint: the only data that leaves the machine. */
/** One agent request the sentry's gateway sent to the escalation endpoint, with its key (issue 20). */
export interface EscalationTraffic {
  /** model.escalate.model: the model that did the work. */
  model: string;
  /** HTTP status the endpoint answered. */
  status: number;
  promptTokens: number | null;
  cachedTokens: number | null;
  completionTokens: number | null;
  durationMs: number;
}

export interface ReviewTraffic {
  /** The endpoint URL (never with credentials: the config refuses them). */
  endpoint: string;
  model: string;
  /** Attempt 1, or 2 for the one retry after a malformed answer. */
  attempt: number;
  /** Request body bytes sent, response body bytes received. */
  bytesSent: number;
  bytesReceived: number;
  /** HTTP status, or null when no answer came (network error, timeout). */
  status: number | null;
  inputTokens: number;
  outputTokens: number;
  /** Tokens × review.price, when a price is configured. */
  cost: number | null;
  /** Diff bytes sent, and the bytes left out past review.maxDiffBytes. */
  diffBytes: number;
  diffCutBytes: number;
}

export interface AuditAggregate {
  /** Times of the first and last attempt counted here. */
  firstTime: string;
  lastTime: string;
  /** Distinct destinations (`ip:port`, `ip`) or names (`name TYPE`) among them. */
  distinct: number;
  /** True when `distinct` stopped counting at its cap: at least that many. */
  distinctCapped: boolean;
  /** The first few distinct destinations or names, as seen. */
  sample: string[];
  /** The limit of individual records per kind and iteration that was reached. */
  limit: number;
}

/** A record as stored in audit.jsonl: chained to the one before (src/audit/chain.ts). */
export interface StoredAuditRecord extends AuditRecord {
  aggregate: AuditAggregate | null;
  seq: number;
  /** Hash of the previous line (the run header for seq 1). */
  prev: string;
  /** SHA-256 (hex) of this line's RFC 8785 canonical form without `hash`. */
  hash: string;
}

/** Per-sandbox totals, kept in the iteration record rather than logged per packet. */
export interface SandboxTraffic {
  allowedPackets: number;
  allowedBytes: number;
  blockedPackets: number;
  dnsBlocked: number;
  dnsAnswered: number;
  lostRecords: number;
  /** Blocked attempts by firewall rule (NFLOG prefix) or `dns` (the DNS front); absent in older records. */
  blockedByRule?: Record<string, number>;
  /** Lost records by counter (the loss record's rule: a firewall rule, `dns-front`, `malformed`); absent in older records. */
  lostByRule?: Record<string, number>;
}

/** The fields every audit record begins with: when, whose (run, task, iteration), which role, what kind. */
export type AuditHeader = Pick<AuditRecord, 'time' | 'runId' | 'task' | 'iteration' | 'role' | 'kind'>;

/** The one constructor of a record's header; a missing task or iteration is stored as null. */
export function auditHeader(
  time: string,
  id: { runId: string; task?: string | null | undefined; iteration?: number | null | undefined },
  role: string,
  kind: AuditKind,
): AuditHeader {
  return { time, runId: id.runId, task: id.task ?? null, iteration: id.iteration ?? null, role, kind };
}

/** Every per-packet field empty: the base of records that stand for no one packet (loss, aggregates). */
export const NO_PACKET_FIELDS = {
  protocol: null,
  family: null,
  direction: null,
  src: null,
  srcPort: null,
  dst: null,
  dstPort: null,
  uid: null,
  query: null,
  queryType: null,
  icmpType: null,
} as const;
