// Turns what the sentry wrote (ulogd's JSON lines, dnsmasq's query log, the firewall
// counters) into audit records. Each sandbox has its own sentry and its own audit folder, so
// attribution to the run, task and iteration is by construction, never by clock.
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { AuditRecord, SandboxTraffic } from '../audit/record.js';
import type { SandboxIdentity } from '../sandbox/specs.js';

export const PACKETS_FILE = 'packets.jsonl';
export const DNS_FILE = 'dns.log';

export interface SentryCounters {
  allowed: { packets: number; bytes: number };
  logged: { packets: number };
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

/** One ulogd JSON line (NFLOG → BASE → IP2STR → JSON) as an audit record. */
export function packetRecord(line: Json, id: SandboxIdentity, role: string): AuditRecord {
  const family = num(line['oob.family']) === 10 ? 'ipv6' : 'ipv4';
  const protoNum = num(first(line, ['ip.protocol', 'ip6.nexthdr', 'ip6.nextheader']));
  const prefix = (str(line['oob.prefix']) ?? 'unknown').trim();
  const sec = num(line['oob.time.sec']);
  const usec = num(line['oob.time.usec']) ?? 0;
  const time = sec !== null ? new Date(sec * 1000 + Math.floor(usec / 1000)).toISOString() : toUtc(str(line.timestamp));
  return {
    time,
    runId: id.runId,
    task: id.task ?? null,
    iteration: id.iteration ?? null,
    role,
    kind: 'packet',
    protocol: protoNum === null ? null : (PROTOCOLS[protoNum] ?? String(protoNum)),
    family,
    direction: /^in/.test(prefix) ? 'in' : 'out',
    src: str(first(line, ['src_ip', 'ip.saddr.str', 'ip.saddr'])),
    srcPort: num(first(line, ['src_port', 'tcp.sport', 'udp.sport'])),
    dst: str(first(line, ['dest_ip', 'ip.daddr.str', 'ip.daddr'])),
    dstPort: num(first(line, ['dest_port', 'tcp.dport', 'udp.dport'])),
    uid: num(line['oob.uid']),
    query: null,
    queryType: null,
    icmpType: num(first(line, ['icmp.type', 'icmpv6.type'])),
    verdict: 'rejected',
    rule: prefix,
    count: 1,
  };
}

function toUtc(value: string | null): string {
  if (!value) return new Date().toISOString();
  const date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`);
  return Number.isNaN(date.getTime()) ? new Date().toISOString() : date.toISOString();
}

// The name may hold spaces (dnsmasq logs it as sent): take everything up to the last " from ".
const DNS_QUERY = /^(\w{3})\s+(\d+)\s+(\d\d:\d\d:\d\d)\s+dnsmasq\[\d+\]:\s+(?:\d+\s+)?(\S+?)(?:\/(\d+))?\s+query\[(\w+)\]\s+(.+)\s+from\s+(\S+)\s*$/;

export interface DnsQuery {
  time: string;
  name: string;
  type: string;
  from: string;
  port: number | null;
}

/** Parses dnsmasq `log-queries=extra` lines: `Nov 24 18:30:00 dnsmasq[7]: 3 127.0.0.1/4012 query[A] x.invalid from 127.0.0.1`. */
export function parseDnsLog(text: string, year = new Date().getUTCFullYear()): DnsQuery[] {
  const out: DnsQuery[] = [];
  for (const line of text.split('\n')) {
    const m = DNS_QUERY.exec(line);
    if (!m) continue;
    const date = new Date(`${m[1]} ${m[2]} ${year} ${m[3]} UTC`);
    out.push({
      time: Number.isNaN(date.getTime()) ? new Date().toISOString() : date.toISOString(),
      name: m[7]!.toLowerCase(),
      type: m[6]!,
      from: m[8]!,
      port: m[5] ? Number(m[5]) : null,
    });
  }
  return out;
}

export function dnsRecord(query: DnsQuery, id: SandboxIdentity, role: string): AuditRecord {
  return {
    time: query.time,
    runId: id.runId,
    task: id.task ?? null,
    iteration: id.iteration ?? null,
    role,
    kind: 'dns',
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
  };
}

export interface IngestResult {
  records: AuditRecord[];
  traffic: SandboxTraffic;
  /** Where the next read of the same folder starts (a sentry serves several iterations). */
  cursor: AuditCursor;
}

/** How much of a sentry's files and counters earlier reads already attributed. */
export interface AuditCursor {
  /** Complete packet lines read so far, and the byte offset after them. */
  packetLines: number;
  packetBytes: number;
  dnsBytes: number;
  counters: SentryCounters;
}

export const START_CURSOR: AuditCursor = { packetLines: 0, packetBytes: 0, dnsBytes: 0, counters: { allowed: { packets: 0, bytes: 0 }, logged: { packets: 0 } } };

/**
 * The complete lines of `file` after byte `offset` (a line the writer has not finished yet
 * belongs to the next read), and how many bytes they span. Reads only the new part, so a long
 * run does not re-read its whole log after every iteration.
 */
async function newLines(file: string, offset: number): Promise<{ lines: string[]; bytes: number }> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { lines: [], bytes: 0 };
    throw error;
  }
  try {
    const size = (await handle.stat()).size;
    if (size <= offset) return { lines: [], bytes: 0 };
    const buffer = Buffer.alloc(size - offset);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
    const end = buffer.subarray(0, bytesRead).lastIndexOf(0x0a);
    if (end < 0) return { lines: [], bytes: 0 };
    return { lines: buffer.subarray(0, end).toString('utf8').split('\n'), bytes: end + 1 };
  } finally {
    await handle.close();
  }
}

/**
 * Reads what the sentry wrote since `since` and attributes it to `id`. `counters` (read from
 * the firewall just before) tell how many packets the NFLOG rules saw: if the files hold fewer,
 * the logger lost some, and a `loss` record says how many, so a flood never drops records
 * silently. Without counters (a crashed attempt) loss cannot be judged.
 */
export async function ingestSandboxAudit(
  dir: string,
  id: SandboxIdentity,
  role: string,
  counters: SentryCounters | undefined,
  answeredNames: string[],
  since: AuditCursor = START_CURSOR,
): Promise<IngestResult> {
  const records: AuditRecord[] = [];
  let malformed = 0;
  const packets = await newLines(path.join(dir, PACKETS_FILE), since.packetBytes);
  for (const line of packets.lines) {
    if (!line.trim()) continue;
    try {
      records.push(packetRecord(JSON.parse(line) as Json, id, role));
    } catch {
      malformed += 1;
    }
  }
  const packetCount = records.length + malformed;
  const answered = new Set(answeredNames.map((n) => n.toLowerCase()));
  let dnsAnswered = 0;
  const dns = await newLines(path.join(dir, DNS_FILE), since.dnsBytes);
  for (const query of parseDnsLog(dns.lines.join('\n'))) {
    if (answered.has(query.name)) dnsAnswered += 1;
    else records.push(dnsRecord(query, id, role));
  }
  const now = counters ?? {
    allowed: since.counters.allowed,
    logged: { packets: since.counters.logged.packets + packetCount },
  };
  const logged = Math.max(0, now.logged.packets - since.counters.logged.packets);
  const lost = Math.max(0, logged - packetCount) + malformed;
  if (lost > 0) {
    records.push({
      time: new Date().toISOString(),
      runId: id.runId,
      task: id.task ?? null,
      iteration: id.iteration ?? null,
      role,
      kind: 'loss',
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
      verdict: 'lost',
      rule: `firewall logged ${logged} packets, ${packetCount - malformed} records arrived${malformed ? `, ${malformed} malformed` : ''}`,
      count: lost,
    });
  }
  records.sort((a, b) => a.time.localeCompare(b.time));
  return {
    records,
    traffic: {
      allowedPackets: Math.max(0, now.allowed.packets - since.counters.allowed.packets),
      allowedBytes: Math.max(0, now.allowed.bytes - since.counters.allowed.bytes),
      blockedPackets: logged,
      dnsBlocked: records.filter((r) => r.kind === 'dns').length,
      dnsAnswered,
      lostRecords: lost,
    },
    cursor: {
      packetLines: since.packetLines + packets.lines.length,
      packetBytes: since.packetBytes + packets.bytes,
      dnsBytes: since.dnsBytes + dns.bytes,
      counters: now,
    },
  };
}

/** How many complete packet records the sentry has written so far. */
export async function packetLinesWritten(dir: string, since: AuditCursor): Promise<number> {
  return since.packetLines + (await newLines(path.join(dir, PACKETS_FILE), since.packetBytes)).lines.length;
}


export function parseCounters(text: string): SentryCounters | undefined {
  try {
    const value = JSON.parse(text.trim().split('\n').pop() ?? '') as SentryCounters;
    if (typeof value.allowed?.packets === 'number' && typeof value.logged?.packets === 'number') return value;
  } catch {
    // fall through
  }
  return undefined;
}
