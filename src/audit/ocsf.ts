// Audit records as OCSF events (https://schema.ocsf.io, version OCSF_VERSION), one per record, for
// SIEMs that ingest OCSF (docs/audit-log.md#ocsf-export says how to ship them). Blocked packets are
// Network Activity (4001), DNS look-ups DNS Activity (4003), requests the model gateway refused
// (`model-denied`) and those it sent to model.escalate's endpoint (`model-escalated`, allowed)
// HTTP Activity (4002); anything else (a `loss` record, or a kind this version
// does not know yet) is a Base Event (0) with the record in `unmapped`.
// Pure functions: the caller streams records in and events out.
import { containerName } from '../docker/labels.js';
import type { AuditRecord } from './record.js';

export const OCSF_VERSION = '1.8.0';

/** What an event needs beyond the record: who we are, and the run's agent image. */
export interface OcsfContext {
  productVersion: string;
  /** The agent image of the record's run (config.json's sandbox.image or the default), if known. */
  agentImage?: string | undefined;
}

export type OcsfEvent = Record<string, unknown>;

/** The fields a record is known to have; anything else on a record goes to `unmapped` as is. */
const KNOWN_FIELDS = new Set(['time', 'runId', 'task', 'iteration', 'role', 'kind', 'protocol', 'family', 'direction', 'src', 'srcPort', 'dst', 'dstPort', 'uid', 'query', 'queryType', 'icmpType', 'verdict', 'rule', 'count']);

const SEVERITY = { informational: 1, low: 2, medium: 3 } as const;
const SEVERITY_NAME: Record<number, string> = { 1: 'Informational', 2: 'Low', 3: 'Medium' };
const PROTOCOL_NUM: Record<string, number> = { icmp: 1, tcp: 6, udp: 17, icmpv6: 58 };

type AnyRecord = AuditRecord & Record<string, unknown>;

export function toOcsf(record: AnyRecord, ctx: OcsfContext): OcsfEvent {
  switch (record.kind) {
    case 'packet':
      return packetEvent(record, ctx);
    case 'dns':
      return dnsEvent(record, ctx);
    case 'model-denied' as AuditRecord['kind']:
      return httpDeniedEvent(record, ctx);
    case 'model-escalated' as AuditRecord['kind']:
      return httpEscalatedEvent(record, ctx);
    default:
      return baseEvent(record, ctx);
  }
}

function packetEvent(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  // A TCP attempt out of the sandbox gets a reset from the firewall: the connection was refused.
  // Everything else (UDP, ICMP, inbound) is traffic that was dropped or answered with an error.
  const activityId = r.protocol === 'tcp' && r.direction !== 'in' ? 5 : 6;
  const inbound = r.direction === 'in';
  const sandbox = sandboxEndpoint(r, ctx);
  const src = { ...(inbound ? {} : sandbox), ...address(r.src, r.srcPort) };
  const dst = { ...(inbound ? sandbox : {}), ...address(r.dst, r.dstPort) };
  const protocolNum = PROTOCOL_NUM[r.protocol ?? ''] ?? (r.protocol && /^\d+$/.test(r.protocol) ? Number(r.protocol) : undefined);
  const where = r.dst ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}${r.dstPort !== null ? `:${r.dstPort}` : ''}` : 'unknown';
  return {
    ...classification(4001, 'Network Activity', 4, 'Network Activity', activityId, activityId === 5 ? 'Refuse' : 'Traffic'),
    ...common(r, ctx, SEVERITY.low, ['security_control', 'container', ...(r.uid !== null ? ['host'] : [])]),
    message: `${inbound ? 'inbound' : 'blocked'} ${r.protocol ?? '?'} ${inbound ? 'from ' + (r.src ?? '?') : 'to ' + where}${r.icmpType !== null ? ` (icmp type ${r.icmpType})` : ''}, rule ${r.rule}`,
    action_id: 2,
    action: 'Denied',
    disposition_id: 2,
    disposition: 'Blocked',
    connection_info: {
      ...(r.protocol ? { protocol_name: r.protocol } : {}),
      ...(protocolNum !== undefined ? { protocol_num: protocolNum } : {}),
      direction_id: inbound ? 1 : 2,
      direction: inbound ? 'Inbound' : 'Outbound',
      ...(r.family ? { protocol_ver_id: r.family === 'ipv6' ? 6 : 4, protocol_ver: r.family === 'ipv6' ? 'Internet Protocol version 6 (IPv6)' : 'Internet Protocol version 4 (IPv4)' } : {}),
    },
    src_endpoint: src,
    dst_endpoint: dst,
    ...(r.uid !== null ? { actor: { user: { uid: String(r.uid) } } } : {}),
  };
}

function dnsEvent(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  const time = Date.parse(r.time);
  // `nxdomain`: answered by the sentry's own resolver. `rejected`: a packet that carried the
  // query (to another resolver, or any port) and was blocked by the firewall: never answered.
  const answered = r.verdict === 'nxdomain';
  const what = `DNS ${r.queryType ?? '?'} ${r.query ?? '(unreadable question)'}`;
  const dnsError = typeof r.dnsError === 'string' ? `; the question could not be read: ${r.dnsError}` : '';
  return {
    ...classification(4003, 'DNS Activity', 4, 'Network Activity', 1, 'Query'),
    ...common(r, ctx, answered ? SEVERITY.informational : SEVERITY.low, ['security_control', 'container']),
    message: answered
      ? `${what} answered NXDOMAIN by the sandbox's resolver${dnsError}`
      : `${what} sent to ${r.dst ?? '?'}:${r.dstPort ?? '?'} blocked by the sandbox firewall (${r.rule})${dnsError}`,
    action_id: 2,
    action: 'Denied',
    disposition_id: 2,
    disposition: 'Blocked',
    query: { hostname: r.query ?? '', ...(r.queryType ? { type: r.queryType } : {}), class: 'IN' },
    query_time: time,
    ...(answered ? { rcode_id: 3, rcode: 'NXDomain' } : {}),
    ...(r.protocol && r.protocol !== 'dns' ? { connection_info: { protocol_name: r.protocol, ...(PROTOCOL_NUM[r.protocol] !== undefined ? { protocol_num: PROTOCOL_NUM[r.protocol] } : {}), direction_id: 2, direction: 'Outbound' } } : {}),
    src_endpoint: { ...sandboxEndpoint(r, ctx), ...address(r.src, r.srcPort) },
    // The sentry's own resolver answers every name but the model's with NXDOMAIN; a blocked
    // packet names the resolver it was aimed at.
    dst_endpoint: answered ? { svc_name: 'dns', ...(r.dstPort !== null ? { port: r.dstPort } : {}) } : { ...address(r.dst, r.dstPort) },
  };
}

const HTTP_ACTIVITY: Record<string, number> = { CONNECT: 1, DELETE: 2, GET: 3, HEAD: 4, OPTIONS: 5, POST: 6, PUT: 7, TRACE: 8, PATCH: 9 };

/** A request to the model that the sentry's gateway refused: `query` is the path, `queryType` the method. */
function httpDeniedEvent(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  // The method and path come from the agent: only a method OCSF knows becomes http_method.
  const method = typeof r.queryType === 'string' ? r.queryType.toUpperCase() : '';
  const activityId = HTTP_ACTIVITY[method] ?? 99;
  const code = /^gateway (\d{3})\b/.exec(r.rule ?? '')?.[1];
  return {
    ...classification(4002, 'HTTP Activity', 4, 'Network Activity', activityId, activityId === 99 ? 'Other' : method.charAt(0) + method.slice(1).toLowerCase()),
    ...common(r, ctx, SEVERITY.low, ['security_control', 'container']),
    message: `model gateway refused ${r.queryType ?? '?'} ${r.query ?? '?'}: ${r.rule}`,
    action_id: 2,
    action: 'Denied',
    disposition_id: 2,
    disposition: 'Blocked',
    http_request: {
      ...(activityId !== 99 ? { http_method: method } : {}),
      url: { scheme: 'http', path: r.query ?? '', ...(r.dstPort !== null ? { port: r.dstPort } : {}) },
    },
    ...(code ? { http_response: { code: Number(code) } } : {}),
    src_endpoint: sandboxEndpoint(r, ctx),
    dst_endpoint: { svc_name: 'model', ...address(r.dst, r.dstPort) },
  };
}

/** A request the gateway sent, with its key, to model.escalate's endpoint (issue 20): allowed. */
function httpEscalatedEvent(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  const method = typeof r.queryType === 'string' ? r.queryType.toUpperCase() : '';
  const activityId = HTTP_ACTIVITY[method] ?? 99;
  const e = (r.escalation && typeof r.escalation === 'object' ? r.escalation : {}) as { model?: unknown; status?: unknown };
  const status = typeof e.status === 'number' ? e.status : undefined;
  return {
    ...classification(4002, 'HTTP Activity', 4, 'Network Activity', activityId, activityId === 99 ? 'Other' : method.charAt(0) + method.slice(1).toLowerCase()),
    ...common(r, ctx, SEVERITY.informational, ['security_control', 'container']),
    message: `model gateway sent ${r.queryType ?? '?'} ${r.query ?? '?'} to the escalation endpoint (model ${typeof e.model === 'string' ? e.model : '?'})${status !== undefined ? `: HTTP ${status}` : ''}`,
    action_id: 1,
    action: 'Allowed',
    disposition_id: 1,
    disposition: 'Allowed',
    http_request: {
      ...(activityId !== 99 ? { http_method: method } : {}),
      url: { path: r.query ?? '', ...(r.dstPort !== null ? { port: r.dstPort } : {}) },
    },
    ...(status !== undefined ? { http_response: { code: status } } : {}),
    src_endpoint: sandboxEndpoint(r, ctx),
    dst_endpoint: { svc_name: 'model-escalate', ...address(r.dst, r.dstPort) },
  };
}

/** Records that are no network attempt (loss) or of a kind this version does not map. */
function baseEvent(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  const loss = r.kind === 'loss';
  return {
    ...classification(0, 'Base Event', 0, 'Uncategorized', 99, 'Other'),
    ...common(r, ctx, loss ? SEVERITY.medium : SEVERITY.informational, []),
    message: loss ? `${r.count} audit record(s) lost: ${lossText(r)}` : `loopbox audit record of kind ${String(r.kind)}`,
  };
}

function lossText(r: AnyRecord): string {
  const l = r.loss as { source?: unknown; counted?: unknown; recorded?: unknown; kernelDropped?: unknown } | undefined;
  if (!l || typeof l !== 'object') return String(r.rule);
  const n = (v: unknown): string => String(typeof v === 'number' ? v : '?');
  if (l.source === 'malformed') return `${n(l.counted)} line(s) of packets.jsonl were not records`;
  const counter = l.source === 'dns-front' ? "the DNS front's port" : `firewall rule ${String(r.rule)}`;
  return `${counter} counted ${n(l.counted)} attempt(s), ${n(l.recorded)} record(s) arrived, ${n(l.kernelDropped)} dropped by the kernel`;
}

function classification(classUid: number, className: string, categoryUid: number, categoryName: string, activityId: number, activityName: string): OcsfEvent {
  return {
    class_uid: classUid,
    class_name: className,
    category_uid: categoryUid,
    category_name: categoryName,
    activity_id: activityId,
    activity_name: activityName,
    type_uid: classUid * 100 + activityId,
    type_name: `${className}: ${activityName}`,
  };
}

function common(r: AnyRecord, ctx: OcsfContext, severityId: number, profiles: string[]): OcsfEvent {
  const labels = [`run:${r.runId}`, ...(r.task !== null && r.task !== undefined ? [`task:${r.task}`] : []), ...(r.iteration !== null && r.iteration !== undefined ? [`iteration:${r.iteration}`] : [])];
  // Everything of the record that no OCSF attribute above holds, plus fields a later version of
  // the record may carry (the hash chain's seq/prev/hash, a gateway's fields): passed through.
  const unmapped: Record<string, unknown> = { runId: r.runId, task: r.task, iteration: r.iteration, kind: r.kind, role: r.role, verdict: r.verdict, rule: r.rule };
  for (const [k, v] of Object.entries(r)) if (!KNOWN_FIELDS.has(k)) unmapped[k] = v;
  // An aggregate record (many attempts past a per-iteration limit, counted in one) spans time.
  const agg = r.aggregate && typeof r.aggregate === 'object' ? (r.aggregate as { firstTime?: unknown; lastTime?: unknown }) : undefined;
  const span = agg && typeof agg.firstTime === 'string' && typeof agg.lastTime === 'string' ? { start_time: Date.parse(agg.firstTime), end_time: Date.parse(agg.lastTime) } : {};
  return {
    time: Date.parse(r.time),
    ...(Number.isNaN(span.start_time) || Number.isNaN(span.end_time) ? {} : span),
    severity_id: severityId,
    severity: SEVERITY_NAME[severityId],
    count: r.count,
    metadata: {
      version: OCSF_VERSION,
      product: { name: 'loopbox', vendor_name: 'loopbox', version: ctx.productVersion },
      ...(profiles.length ? { profiles } : {}),
      log_name: 'audit.jsonl',
      original_time: r.time,
      correlation_uid: r.runId,
      labels,
      ...(typeof r.seq === 'number' && Number.isInteger(r.seq) ? { sequence: r.seq } : {}),
      ...(typeof r.hash === 'string' ? { uid: r.hash } : {}),
    },
    unmapped,
  };
}

/** The sandbox side of an attempt: the iteration's agent container, in the sentry's namespace. */
function sandboxEndpoint(r: AnyRecord, ctx: OcsfContext): OcsfEvent {
  // Container names are loopbox's own (`loopbox-<run>-<task>-i<n>-agent`) and unique per run and
  // iteration; Docker's container id is not kept after the container is removed.
  const name = containerName({ runId: r.runId, task: r.task ?? undefined, iteration: r.iteration ?? undefined }, r.role || 'agent');
  const image = ctx.agentImage ? imageObject(ctx.agentImage) : undefined;
  return {
    name,
    uid: name,
    container: { name, uid: name, ...(image ? { image } : {}) },
  };
}

function imageObject(ref: string): OcsfEvent {
  const colon = ref.lastIndexOf(':');
  const hasTag = colon > ref.lastIndexOf('/');
  return { uid: ref, name: hasTag ? ref.slice(0, colon) : ref, ...(hasTag ? { tag: ref.slice(colon + 1) } : {}) };
}

function address(ip: string | null, port: number | null): OcsfEvent {
  return { ...(ip ? { ip } : {}), ...(port !== null && port !== undefined ? { port } : {}) };
}
