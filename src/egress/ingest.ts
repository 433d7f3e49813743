// Turns what the sentry wrote (the packet logger's JSON lines, the DNS front's query lines, the
// firewall counters) into audit records. A loop run has one sentry that serves every iteration; each
// collect reads only what was written since the last one (file offsets and counter deltas kept in
// an AuditCursor), so attribution to the run, task and iteration is by position, never by clock.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { type AuditRecord, NO_PACKET_FIELDS, auditHeader, type SandboxIdentity, type SandboxTraffic } from '../audit/record.js';
import { DNS_QUERIES_FILE, type DnsQuery, normalise, parseDnsFrontLine } from './dns-records.js';

const normaliseName = (name: string | null): string | null => (name === null ? null : normalise(name.slice(0, 2048)));

export const PACKETS_FILE = 'packets.jsonl';
export const DNS_FILE = 'dns.log';

export interface SentryCounters {
  allowed: { packets: number; bytes: number };
  /** Packets the NFLOG rules saw, in all and per rule (its NFLOG prefix; absent from older sentries). */
  logged: { packets: number; rules?: Record<string, number> };
  /** Packets that reached the DNS front's port, and the kernel's drops at its UDP socket (issue 17). */
  dns?: { udp: number; tcp: number; drops: number };
}

const PROTOCOLS: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6' };

type Json = Record<string, unknown>;

function num(value: unknown): number | null {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string' && /^\d+$/.test(value)) return Number(value);
  return null;
}

function str(value: unknown): string | null {
  return typeof value === 'string' && value !== '' ? value : null;
}

function first(obj: Json, keys: string[]): unknown {
  for (const key of keys) if (obj[key] !== undefined && obj[key] !== null) return obj[key];
  return undefined;
}

/**
 * One packet logger line (images/sentry/pktlog.py, or ulogd's JSON from older sentries) as an
 * audit record. A packet that carried a DNS question (`dns.*` keys) becomes a `dns` record with
 * the firewall's verdict, its destination and the name: a query sent straight to an outside
 * resolver is recorded with the name it tried to send (issue 17, item 2).
 */
export function packetRecord(line: Json, id: SandboxIdentity, role: string): AuditRecord {
  const family = num(line['oob.family']) === 10 ? 'ipv6' : 'ipv4';
  const protoNum = num(first(line, ['ip.protocol', 'ip6.nexthdr', 'ip6.nextheader']));
  const prefix = (str(line['oob.prefix']) ?? 'unknown').trim();
  const sec = num(line['oob.time.sec']);
  const usec = num(line['oob.time.usec']) ?? 0;
  const time = sec !== null ? new Date(sec * 1000 + Math.floor(usec / 1000)).toISOString() : toUtc(str(line.timestamp));
  const dns = 'dns.name' in line || 'dns.error' in line;
  const dnsError = str(line['dns.error']);
  const payload = str(line['dns.payload']);
  return {
    ...auditHeader(time, id, role, dns ? 'dns' : 'packet'),
    protocol: protoNum === null ? null : (PROTOCOLS[protoNum] ?? String(protoNum)),
    family,
    direction: /^in/.test(prefix) ? 'in' : 'out',
    src: str(first(line, ['src_ip', 'ip.saddr.str', 'ip.saddr'])),
    srcPort: num(first(line, ['src_port', 'tcp.sport', 'udp.sport'])),
    dst: str(first(line, ['dest_ip', 'ip.daddr.str', 'ip.daddr'])),
    dstPort: num(first(line, ['dest_port', 'tcp.dport', 'udp.dport'])),
    uid: num(line['oob.uid']),
    query: dns ? normaliseName(str(line['dns.name'])) : null,
    queryType: dns ? str(line['dns.type']) : null,
    icmpType: num(first(line, ['icmp.type', 'icmpv6.type'])),
    verdict: 'rejected',
    rule: prefix,
    count: 1,
    ...(dnsError ? { dnsError: dnsError.slice(0, 200) } : {}),
    ...(dnsError && payload ? { payload: payload.slice(0, 512) } : {}),
  };
}

function toUtc(value: string | null): string {
  if (!value) return new Date().toISOString();
  const date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`);
  return Number.isNaN(date.getTime()) ? new Date().toISOString() : date.toISOString();
}

// The name may hold spaces (dnsmasq logs it as sent): take everything up to the last " from ".
const DNS_QUERY = /^(\w{3})\s+(\d+)\s+(\d\d:\d\d:\d\d)\s+dnsmasq\[\d+\]:\s+(?:\d+\s+)?(\S+?)(?:\/(\d+))?\s+query\[(\w+)\]\s+(.+)\s+from\s+(\S+)\s*$/;

export type { DnsQuery };

/** One dnsmasq `log-queries=extra` query line: `Nov 24 18:30:00 dnsmasq[7]: 3 127.0.0.1/4012 query[A] x.invalid from 127.0.0.1`; other lines give null. */
export function parseDnsLine(line: string, year = new Date().getUTCFullYear()): DnsQuery | null {
  const m = DNS_QUERY.exec(line);
  if (!m) return null;
  const date = new Date(`${m[1]} ${m[2]} ${year} ${m[3]} UTC`);
  return {
    time: Number.isNaN(date.getTime()) ? new Date().toISOString() : date.toISOString(),
    name: m[7]!.toLowerCase(),
    type: m[6]!,
    from: m[8]!,
    port: m[5] ? Number(m[5]) : null,
  };
}

/** Every query line of a dnsmasq log text. */
export function parseDnsLog(text: string, year = new Date().getUTCFullYear()): DnsQuery[] {
  const out: DnsQuery[] = [];
  for (const line of text.split('\n')) {
    const q = parseDnsLine(line, year);
    if (q) out.push(q);
  }
  return out;
}

export function dnsRecord(query: DnsQuery, id: SandboxIdentity, role: string): AuditRecord {
  return {
    ...auditHeader(query.time, id, role, 'dns'),
    protocol: 'dns',
    family: query.from.includes(':') ? 'ipv6' : 'ipv4',
    direction: 'out',
    src: query.from,
    srcPort: query.port,
    dst: null,
    dstPort: 53,
    uid: null,
    query: query.name,
    queryType: query.type,
    icmpType: null,
    verdict: 'nxdomain',
    rule: 'dns',
    count: 1,
    ...(query.error ? { dnsError: query.error } : {}),
    ...(query.error && query.raw ? { payload: query.raw.slice(0, 512) } : {}),
  };
}

export interface IngestResult {
  /** What goes into audit.jsonl: at most `limit` individual records per kind, then aggregates. */
  records: AuditRecord[];
  traffic: SandboxTraffic;
  /** Where the next read of the same folder starts (a sentry serves several iterations). */
  cursor: AuditCursor;
  /** Attempts behind `records`: the sum of their counts (aggregates and loss included). */
  attempts: number;
}

/** How much of a sentry's files and counters earlier reads already attributed. */
export interface AuditCursor {
  /** Complete packet lines read so far, and the byte offset after them. */
  packetLines: number;
  packetBytes: number;
  dnsBytes: number;
  /** Bytes of the DNS front's dns.jsonl read so far (absent in cursors saved before it existed). */
  dnsFrontBytes?: number;
  counters: SentryCounters;
}

export const START_CURSOR: AuditCursor = { packetLines: 0, packetBytes: 0, dnsBytes: 0, counters: { allowed: { packets: 0, bytes: 0 }, logged: { packets: 0 } } };

/** Individual records per kind (and verdict, protocol) and iteration before aggregation. */
export const DEFAULT_RECORD_LIMIT = 1000;
/** Distinct destinations or names an aggregate counts exactly before it says "at least". */
export const DISTINCT_CAP = 100_000;
const SAMPLE_SIZE = 10;
/** A line longer than this is not something ulogd or dnsmasq wrote: counted as malformed. */
const MAX_LINE_BYTES = 64 * 1024;

/**
 * Calls `onLine` for every complete line of `file` from byte `offset` to the size it had when
 * the read began (a line the writer has not finished belongs to the next read), streaming in
 * 64 KiB chunks: memory does not grow with the file. Over-long lines are passed as `null`.
 * Returns how many lines and bytes were consumed.
 */
export async function streamLines(file: string, offset: number, onLine: (line: string | null) => void): Promise<{ lines: number; bytes: number }> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { lines: 0, bytes: 0 };
    throw error;
  }
  if (size <= offset) return { lines: 0, bytes: 0 };
  let lines = 0;
  let consumed = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let overlong = false;
  for await (const chunk of createReadStream(file, { start: offset, end: size - 1, highWaterMark: 64 * 1024 }) as AsyncIterable<Buffer>) {
    let from = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, from);
      if (nl < 0) break;
      const piece = chunk.subarray(from, nl);
      if (overlong || pendingBytes + piece.length > MAX_LINE_BYTES) onLine(null);
      else onLine((pendingBytes ? Buffer.concat([...pending, piece]) : piece).toString('utf8'));
      consumed += pendingBytes + piece.length + 1;
      lines += 1;
      pending = [];
      pendingBytes = 0;
      overlong = false;
      from = nl + 1;
    }
    const rest = chunk.subarray(from);
    if (rest.length) {
      if (pendingBytes + rest.length > MAX_LINE_BYTES) {
        overlong = true;
        pending = [];
      } else pending.push(Buffer.from(rest));
      pendingBytes += rest.length;
    }
  }
  return { lines, bytes: consumed };
}

/** What an aggregate counts as distinct for a record: its destination, or its name and type. */
function distinctKey(r: AuditRecord): string {
  if (r.query !== null) return `${r.query} ${r.queryType ?? ''}`.trim();
  if (r.dst !== null) return r.dstPort !== null ? `${r.family === 'ipv6' ? `[${r.dst}]` : r.dst}:${r.dstPort}` : r.dst;
  return r.rule;
}

interface Aggregate {
  template: AuditRecord;
  count: number;
  firstTime: string;
  lastTime: string;
  distinct: Set<string>;
  capped: boolean;
  sample: string[];
  rules: Set<string>;
  protocols: Set<string | null>;
}

const COMMON_PROTOCOLS = new Set(['tcp', 'udp', 'icmp', 'icmpv6', 'dns']);

/**
 * Rate-limits one iteration's records: the first `limit` of each kind (with its verdict and
 * protocol) are kept as they are; past that, attempts are counted into one aggregate record
 * per kind with first and last time, count, distinct destinations or names, and a sample.
 * Memory is bounded by `limit` records and `DISTINCT_CAP` strings per kind. Any record kind
 * (a new parser's too) goes through `add`.
 */
export class RecordLimiter {
  private readonly kept: AuditRecord[] = [];
  private readonly seen = new Map<string, number>();
  private readonly aggregates = new Map<string, Aggregate>();
  attempts = 0;

  constructor(readonly limit: number = DEFAULT_RECORD_LIMIT) {}

  add(record: AuditRecord): void {
    this.attempts += record.count;
    // Unusual IP protocols share one class: an agent cycling through 256 protocol numbers
    // must not multiply the limit by 256.
    const protocolClass = record.protocol === null || COMMON_PROTOCOLS.has(record.protocol) ? (record.protocol ?? '') : 'other';
    const key = `${record.kind}\u0000${record.verdict}\u0000${protocolClass}`;
    const n = (this.seen.get(key) ?? 0) + 1;
    this.seen.set(key, n);
    if (n <= this.limit) {
      this.kept.push(record);
      return;
    }
    let agg = this.aggregates.get(key);
    if (!agg) {
      agg = { template: record, count: 0, firstTime: record.time, lastTime: record.time, distinct: new Set(), capped: false, sample: [], rules: new Set(), protocols: new Set() };
      this.aggregates.set(key, agg);
    }
    agg.count += record.count;
    if (record.time < agg.firstTime) agg.firstTime = record.time;
    if (record.time > agg.lastTime) agg.lastTime = record.time;
    if (agg.rules.size < 16) agg.rules.add(record.rule);
    agg.protocols.add(record.protocol);
    const d = distinctKey(record).slice(0, 300);
    if (!agg.distinct.has(d)) {
      if (agg.distinct.size < DISTINCT_CAP) {
        agg.distinct.add(d);
        if (agg.sample.length < SAMPLE_SIZE) agg.sample.push(d);
      } else agg.capped = true;
    }
  }

  /** The kept records sorted by time, then one aggregate per kind that went over the limit. */
  finish(): AuditRecord[] {
    const out = this.kept.sort((a, b) => a.time.localeCompare(b.time));
    for (const agg of this.aggregates.values()) {
      const t = agg.template;
      out.push({
        ...t,
        ...NO_PACKET_FIELDS,
        family: t.family,
        direction: t.direction,
        time: agg.firstTime,
        protocol: agg.protocols.size === 1 ? t.protocol : null,
        rule: agg.rules.size === 1 ? t.rule : [...agg.rules].sort().join(','),
        count: agg.count,
        aggregate: { firstTime: agg.firstTime, lastTime: agg.lastTime, distinct: agg.distinct.size, distinctCapped: agg.capped, sample: agg.sample, limit: this.limit },
      });
    }
    return out;
  }
}

export interface IngestOptions {
  /** Individual records per kind before aggregation (default DEFAULT_RECORD_LIMIT). */
  recordLimit?: number;
}

/** The packet logger's own accounting lines (pktlog.py): packets the kernel could not hand over. */
interface LoggerNote {
  gap?: unknown;
  overrun?: unknown;
}

/** How many records a packet-logger line stands for, for the wait in collect(): a gap line counts its packets. */
export function packetLineWeight(line: string | null): number {
  if (line === null || !line.startsWith('{"gap":')) return line === null || line.trim() ? 1 : 0;
  const gap = num((JSON.parse(line) as LoggerNote).gap);
  return gap ?? 1;
}

/** Counts DNS front lines of UDP queries (the ones the lbx-dns-udp counter also counts). */
export function frontUdpLine(line: string | null): number {
  return line !== null && line.includes('"proto":"udp"') ? 1 : 0;
}

function delta(now: number | undefined, before: number | undefined): number {
  return Math.max(0, (now ?? 0) - (before ?? 0));
}

/**
 * Reads what the sentry wrote since `since` and attributes it to `id`, line by line in bounded
 * memory (issue 8.3: a million DNS queries once made this throw ERR_STRING_TOO_LONG).
 * `counters` (read from the firewall just before) tell how many packets each NFLOG rule and the
 * DNS front's port saw: where the files hold fewer records, the difference is a `loss` record
 * per rule, so records + aggregates + loss = attempts at any rate (issue 17, item 1). Without
 * counters (a crashed attempt) loss cannot be judged.
 */
export async function ingestSandboxAudit(
  dir: string,
  id: SandboxIdentity,
  role: string,
  counters: SentryCounters | undefined,
  answeredNames: string[],
  since: AuditCursor = START_CURSOR,
  options: IngestOptions = {},
): Promise<IngestResult> {
  const limiter = new RecordLimiter(options.recordLimit ?? DEFAULT_RECORD_LIMIT);
  let malformed = 0;
  let packetRecords = 0;
  let gaps = 0;
  const byRule = new Map<string, number>();
  const packets = await streamLines(path.join(dir, PACKETS_FILE), since.packetBytes, (line) => {
    if (line === null) {
      malformed += 1;
      return;
    }
    if (!line.trim()) return;
    let json: Json;
    try {
      json = JSON.parse(line) as Json;
    } catch {
      malformed += 1;
      return;
    }
    if ('gap' in json || 'overrun' in json) {
      gaps += num((json as LoggerNote).gap) ?? 0;
      return;
    }
    const record = packetRecord(json, id, role);
    packetRecords += 1;
    byRule.set(record.rule, (byRule.get(record.rule) ?? 0) + 1);
    limiter.add(record);
  });
  const answered = new Set(answeredNames.map((n) => n.toLowerCase()));
  let dnsAnswered = 0;
  let dnsBlocked = 0;
  let frontUdp = 0;
  const year = new Date().getUTCFullYear();
  const onQuery = (query: DnsQuery | null): void => {
    if (!query) return;
    if (query.proto === 'udp') frontUdp += 1;
    if (query.name !== null && !query.error && answered.has(query.name)) dnsAnswered += 1;
    else {
      dnsBlocked += 1;
      limiter.add(dnsRecord(query, id, role));
    }
  };
  // dns.log: dnsmasq's own query log (sentries before the DNS front); dns.jsonl: the front's.
  const dns = await streamLines(path.join(dir, DNS_FILE), since.dnsBytes, (line) => onQuery(line === null ? null : parseDnsLine(line, year)));
  const front = await streamLines(path.join(dir, DNS_QUERIES_FILE), since.dnsFrontBytes ?? 0, (line) => onQuery(line === null ? null : parseDnsFrontLine(line)));
  const packetCount = packetRecords + malformed;
  // Without counters, what was read moves every counter on, so the next read's deltas do not
  // count these records' packets again as missing.
  const advanced = (rules: Record<string, number> | undefined): Record<string, number> => {
    const out = { ...rules };
    for (const [rule, n] of byRule) out[rule] = (out[rule] ?? 0) + n;
    return out;
  };
  const before = since.counters.dns;
  const now: SentryCounters = counters ?? {
    allowed: since.counters.allowed,
    logged: { packets: since.counters.logged.packets + packetCount, rules: advanced(since.counters.logged.rules) },
    ...(before ? { dns: { ...before, udp: before.udp + frontUdp } } : {}),
  };
  const records = limiter.finish();
  const loss = (rule: string, source: NonNullable<AuditRecord['loss']>['source'], counted: number, recorded: number, kernelDropped: number): void => {
    const lost = counted - recorded;
    if (lost <= 0) return;
    records.push({
      ...auditHeader(new Date().toISOString(), id, role, 'loss'),
      ...NO_PACKET_FIELDS,
      verdict: 'lost',
      rule,
      count: lost,
      loss: { source, counted, recorded, kernelDropped: Math.min(lost, kernelDropped) },
    });
  };
  const logged = delta(now.logged.packets, since.counters.logged.packets);
  if (counters?.logged.rules) {
    // Per rule: the rule's packet counter against the records that name it.
    for (const [rule, count] of Object.entries(counters.logged.rules)) loss(rule, 'nflog', delta(count, since.counters.logged.rules?.[rule]), byRule.get(rule) ?? 0, gaps);
  } else if (counters) loss('nflog', 'nflog', logged, packetRecords, gaps);
  // With counters, an unreadable line is already in its rule's shortfall; without, it is the
  // only sign of a lost record.
  if (malformed && !counters) loss('malformed', 'malformed', malformed, 0, 0);
  if (counters?.dns) loss('dns-front', 'dns-front', delta(counters.dns.udp, since.counters.dns?.udp), frontUdp, delta(counters.dns.drops, since.counters.dns?.drops));
  const lost = records.reduce((n, r) => n + (r.kind === 'loss' ? r.count : 0), 0);
  const blockedByRule: Record<string, number> = {};
  const lostByRule: Record<string, number> = {};
  for (const r of records) {
    const by = r.kind === 'loss' ? lostByRule : blockedByRule;
    by[r.rule] = (by[r.rule] ?? 0) + r.count;
  }
  return {
    records,
    attempts: limiter.attempts + lost,
    traffic: {
      allowedPackets: delta(now.allowed.packets, since.counters.allowed.packets),
      allowedBytes: delta(now.allowed.bytes, since.counters.allowed.bytes),
      blockedPackets: logged,
      dnsBlocked,
      dnsAnswered,
      lostRecords: lost,
      blockedByRule,
      lostByRule,
    },
    cursor: {
      packetLines: since.packetLines + packets.lines,
      packetBytes: since.packetBytes + packets.bytes,
      dnsBytes: since.dnsBytes + dns.bytes,
      dnsFrontBytes: (since.dnsFrontBytes ?? 0) + front.bytes,
      counters: now,
    },
  };
}

export function parseCounters(text: string): SentryCounters | undefined {
  try {
    const value = JSON.parse(text.trim().split('\n').pop() ?? '') as SentryCounters;
    if (typeof value.allowed?.packets !== 'number' || typeof value.logged?.packets !== 'number') return undefined;
    const rules = value.logged.rules && typeof value.logged.rules === 'object' ? Object.entries(value.logged.rules).filter(([, n]) => typeof n === 'number') : undefined;
    const dns = value.dns && typeof value.dns.udp === 'number' ? { udp: value.dns.udp, tcp: Number(value.dns.tcp) || 0, drops: Number(value.dns.drops) || 0 } : undefined;
    return { allowed: value.allowed, logged: { packets: value.logged.packets, ...(rules ? { rules: Object.fromEntries(rules) } : {}) }, ...(dns ? { dns } : {}) };
  } catch {
    // fall through
  }
  return undefined;
}
