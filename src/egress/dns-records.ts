// The sentry's DNS front writes one JSON line per query to dns.jsonl, with the name byte for
// byte in DNS presentation form (`\DDD` for any byte that is not printable ASCII), where dnsmasq
// wrote `<name unprintable>` and so hid the very bytes an exfiltration carries (issue 8, item 2).
// This parses such a line into the query ingest turns into a `dns` record (src/egress/ingest.ts).
import type { DnsQuery } from './ingest.js';

export const DNS_QUERIES_FILE = 'dns.jsonl';

type Json = Record<string, unknown>;

/** Lower-cases ASCII letters only: the `\DDD` escapes and other bytes stay as they are. */
function normalise(name: string): string {
  return name.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** One DNS front line as a query; null when it is not one. */
export function parseDnsFrontLine(line: string): DnsQuery | null {
  if (!line.trim()) return null;
  let j: Json;
  try {
    j = JSON.parse(line) as Json;
  } catch {
    return null;
  }
  const time = typeof j.time === 'string' ? j.time : '';
  if (Number.isNaN(new Date(time).getTime())) return null;
  return {
    time: new Date(time).toISOString(),
    name: typeof j.name === 'string' ? normalise(j.name.slice(0, 2048)) : `(unparsed query ${typeof j.raw === 'string' ? j.raw.slice(0, 1024) : ''})`,
    type: typeof j.type === 'string' ? j.type : 'unknown',
    from: typeof j.from === 'string' ? j.from : '127.0.0.1',
    port: typeof j.port === 'number' ? j.port : null,
  };
}
