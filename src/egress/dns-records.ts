// What the sentry's DNS front wrote (one JSON line per query in dns.jsonl) as `dns` audit
// records. The front logs the name byte for byte in DNS presentation form (`\DDD` for any
// byte that is not printable ASCII), where dnsmasq wrote `<name unprintable>` and so hid the
// very bytes an exfiltration carries (issue 8, item 2). Read by its own cursor, like
// gateway.jsonl (src/egress/gateway-records.ts).
import { createReadStream } from 'node:fs';
import path from 'node:path';
import type { AuditRecord } from '../audit/record.js';
import type { SandboxIdentity } from '../sandbox/specs.js';
import { dnsRecord } from './ingest.js';

export const DNS_QUERIES_FILE = 'dns.jsonl';

export interface DnsRead {
  records: AuditRecord[];
  /** Queries for the names the sentry answers (the model): counted, not logged. */
  answered: number;
  malformed: number;
  offset: number;
}

type Json = Record<string, unknown>;

/** Lower-cases ASCII letters only: the `\DDD` escapes and other bytes stay as they are. */
function normalise(name: string): string {
  return name.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** One front line as a `dns` record, or undefined when it is not one. */
export function dnsQueryRecord(line: string, id: SandboxIdentity, role: string): AuditRecord | undefined {
  let j: Json;
  try {
    j = JSON.parse(line) as Json;
  } catch {
    return undefined;
  }
  const time = typeof j.time === 'string' ? j.time : '';
  if (Number.isNaN(new Date(time).getTime())) return undefined;
  const name = typeof j.name === 'string' ? normalise(j.name.slice(0, 2048)) : `(unparsed query ${typeof j.raw === 'string' ? j.raw.slice(0, 1024) : ''})`;
  const record = dnsRecord(
    {
      time,
      name,
      type: typeof j.type === 'string' ? j.type : 'unknown',
      from: typeof j.from === 'string' ? j.from : '127.0.0.1',
      port: typeof j.port === 'number' ? j.port : null,
    },
    id,
    role,
  );
  return record;
}

/** Reads the complete lines of dns.jsonl after byte `offset`, streaming. */
export async function readDnsQueries(dir: string, id: SandboxIdentity, role: string, offset: number, answeredNames: string[]): Promise<DnsRead> {
  const answeredSet = new Set(answeredNames.map((n) => n.toLowerCase()));
  const records: AuditRecord[] = [];
  let answered = 0;
  let malformed = 0;
  let consumed = offset;
  const take = (line: string): void => {
    if (!line.trim()) return;
    const r = dnsQueryRecord(line, id, role);
    if (!r) malformed += 1;
    else if (r.query !== null && answeredSet.has(r.query)) answered += 1;
    else records.push(r);
  };
  try {
    let rest = Buffer.alloc(0);
    for await (const chunk of createReadStream(path.join(dir, DNS_QUERIES_FILE), { start: offset })) {
      let buf = rest.length ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
      let nl: number;
      while ((nl = buf.indexOf(0x0a)) >= 0) {
        take(buf.subarray(0, nl).toString('utf8'));
        consumed += nl + 1;
        buf = buf.subarray(nl + 1);
      }
      if (buf.length > 1024 * 1024) {
        malformed += 1;
        consumed += buf.length;
        buf = Buffer.alloc(0);
      }
      rest = Buffer.from(buf);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  return { records, answered, malformed, offset: consumed };
}
