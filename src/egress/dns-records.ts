// The sentry's DNS front writes one JSON line per query to dns.jsonl, with the name byte for
// byte in DNS presentation form (`\DDD` for any byte that is not printable ASCII), where dnsmasq
// wrote `<name unprintable>` and so hid the very bytes an exfiltration carries (issue 8, item 2).
// This parses such a line into the query ingest turns into a `dns` record (src/egress/ingest.ts).

export const DNS_QUERIES_FILE = 'dns.jsonl';

/** One DNS query the sentry saw, from dnsmasq's log or the DNS front's dns.jsonl. */
export interface DnsQuery {
  time: string;
  /** The question's name; null when nothing of it could be read (`error` says why). */
  name: string | null;
  type: string;
  from: string;
  port: number | null;
  /** `udp` or `tcp` (DNS front lines; dnsmasq's log does not say). */
  proto?: string;
  /** Why the question could not be read whole, and the message's first bytes (hex). */
  error?: string;
  raw?: string;
}

type Json = Record<string, unknown>;

/** Lower-cases ASCII letters only: the `\DDD` escapes and other bytes stay as they are. */
export function normalise(name: string): string {
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
  const name = typeof j.name === 'string' ? normalise(j.name.slice(0, 2048)) : null;
  // Fronts before issue 17 wrote `raw` without `error` for a message they could not read.
  const error = typeof j.error === 'string' ? j.error.slice(0, 200) : name === null ? 'question could not be read' : undefined;
  return {
    time: new Date(time).toISOString(),
    name,
    type: typeof j.type === 'string' ? j.type : 'unknown',
    from: typeof j.from === 'string' ? j.from : '127.0.0.1',
    port: typeof j.port === 'number' ? j.port : null,
    ...(j.proto === 'udp' || j.proto === 'tcp' ? { proto: j.proto } : {}),
    ...(error ? { error } : {}),
    ...(error && typeof j.raw === 'string' ? { raw: j.raw.slice(0, 512) } : {}),
  };
}
