// The sentry's parsers of what the agent sends (images/sentry/lbxsentry.py, pktlog.py), run with
// the machine's python3 on packets built here byte by byte: DNS questions, malformed and
// hostile ones (pointer loops, a header claiming 65535 questions, over-long names), and the IP
// and UDP/TCP headers the packet logger reads (issue 17, item 2).
import { execa } from 'execa';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SENTRY = path.resolve(import.meta.dirname, '..', '..', 'images', 'sentry');

/** Runs `expr` per hex input in python3 -I -B (no bytecode left in images/) with the sentry's modules importable; JSON out. */
async function py(expr: string, inputs: string[]): Promise<unknown[]> {
  const script = `
import sys, json
sys.path.insert(0, ${JSON.stringify(SENTRY)})
import lbxsentry, pktlog, socket
out = []
for h in json.loads(sys.stdin.read()):
    b = bytes.fromhex(h)
    out.append(${expr})
print(json.dumps(out))`;
  const r = await execa('python3', ['-I', '-B', '-c', script], { input: JSON.stringify(inputs) });
  return JSON.parse(r.stdout) as unknown[];
}

function query(name: string, type = 1, flags = 0x0100, counts = [1, 0, 0, 0]): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(0x1234, 0);
  head.writeUInt16BE(flags, 2);
  counts.forEach((c, i) => head.writeUInt16BE(c, 4 + 2 * i));
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([Buffer.byteLength(l, 'latin1')]), Buffer.from(l, 'latin1')]));
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(type, 1);
  tail.writeUInt16BE(1, 3);
  return Buffer.concat([head, ...labels, tail]);
}

const hex = (b: Buffer): string => b.toString('hex');
const question = (strict = false): string => `list(lbxsentry.question(b, strict=${strict ? 'True' : 'False'}))`;

describe('sentry DNS question parser (python3, the code the sentry runs)', () => {
  it('reads names and types, escaping every byte that is not printable ASCII', async () => {
    const weird = Buffer.concat([Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 6, 0x01, 0xff, 0x41, 0x20, 0x2e, 0x5c, 7]), Buffer.from('invalid'), Buffer.from([0, 0, 16, 0, 1])]);
    expect(await py(question(), [hex(query('a.b.invalid')), hex(weird), hex(query('x.invalid', 65))])).toEqual([
      ['a.b.invalid', 'A', null],
      ['\\001\\255A\\032\\.\\\\.invalid', 'TXT', null],
      ['x.invalid', 'HTTPS', null],
    ]);
  });

  it('hostile messages give a parse error and what could be read, never an exception or a hang', async () => {
    const head = (qd: number): Buffer => Buffer.from([0, 1, 1, 0, qd >> 8, qd & 255, 0, 0, 0, 0, 0, 0]);
    const cases = [
      Buffer.from([1, 2, 3]), // shorter than a header
      head(0), // no question
      Buffer.concat([head(1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]), // pointer to itself
      Buffer.concat([head(1), Buffer.from([1, 0x61, 0xc0, 14, 0, 1, 0, 1])]), // a → pointer → pointer (loop of two)
      Buffer.concat([head(65535), Buffer.from([63]), Buffer.from('abc')]), // 65535 questions, label past the end
      Buffer.concat([head(1), ...Array.from({ length: 200 }, () => Buffer.from([1, 0x61]))]), // 200 labels, no end
      Buffer.concat([head(1), Buffer.from([0x80, 0, 0, 1, 0, 1])]), // reserved label type
      Buffer.concat([head(1), Buffer.from([3]), Buffer.from('abc'), Buffer.from([0])]), // no type or class
    ];
    const out = (await py(question(), cases.map(hex))) as Array<[string | null, string | null, string | null]>;
    expect(out.map((o) => o[2])).toEqual([
      'short message (3 bytes, a DNS header has 12)',
      'no question',
      'compression pointer loop',
      'compression pointer loop',
      'label of 63 bytes runs past the end of the message',
      'name longer than 255 bytes',
      'label type 0x80 is not a length',
      'question has no type and class',
    ]);
    // What could be read before the error is kept: the data may be the exfiltration.
    expect(out[3]![0]).toMatch(/^a(\.a)*$/);
    expect(out[5]![0]!.split('.').length).toBe(127);
    expect(out[7]![0]).toBe('abc');
  });

  it('strict (ports other than 53): only a message that is a query in every header field counts', async () => {
    const answer = query('a.invalid', 1, 0x8180);
    const twoQuestions = query('a.invalid', 1, 0x0100, [2, 0, 0, 0]);
    const chaos = query('a.invalid', 1);
    chaos.writeUInt16BE(9, chaos.length - 2); // class 9: not one a query uses
    const out = (await py(question(true), [hex(query('ok.invalid')), hex(answer), hex(twoQuestions), hex(chaos), hex(Buffer.from('GET / HTTP/1.1\r\n\r\n'))])) as unknown[][];
    expect(out.map((o) => o[2])).toEqual([null, 'not a query', 'not a query', 'not a query', 'not a query']);
  });
});

describe('sentry packet logger header parser (python3)', () => {
  function ipv4(proto: number, payload: Buffer): Buffer {
    const h = Buffer.alloc(20);
    h[0] = 0x45;
    h.writeUInt16BE(20 + payload.length, 2);
    h[8] = 64;
    h[9] = proto;
    Buffer.from([172, 20, 0, 3]).copy(h, 12);
    Buffer.from([10, 213, 70, 2]).copy(h, 16);
    return Buffer.concat([h, payload]);
  }
  function udp(sport: number, dport: number, data: Buffer): Buffer {
    const h = Buffer.alloc(8);
    h.writeUInt16BE(sport, 0);
    h.writeUInt16BE(dport, 2);
    h.writeUInt16BE(8 + data.length, 4);
    return Buffer.concat([h, data]);
  }
  function tcpSyn(dport: number): Buffer {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(40000, 0);
    h.writeUInt16BE(dport, 2);
    h[12] = 5 << 4;
    h[13] = 0x02;
    return h;
  }
  // pktlog.parse_ip fills a dict in place: return the dict it filled.
  const run = (inputs: Buffer[], family = 2): Promise<unknown[]> => py(`(lambda e: (pktlog.parse_ip(e, ${family}, b), e)[1])({})`, inputs.map(hex));

  it('UDP to port 53 always carries dns fields; another port only when it is a query; TCP/53 with no payload says so', async () => {
    const out = (await run([
      ipv4(17, udp(4000, 53, query('exfil.x.invalid', 16))),
      ipv4(17, udp(4001, 53, Buffer.from('exfil'))),
      ipv4(17, udp(4002, 5353, query('shaped.invalid'))),
      ipv4(17, udp(4003, 9999, Buffer.from('x'))),
      ipv4(6, tcpSyn(53)),
      ipv4(1, Buffer.from([8, 0, 0, 0])),
    ])) as Array<Record<string, unknown>>;
    expect(out[0]).toMatchObject({ 'ip.protocol': 17, src_ip: '172.20.0.3', dest_ip: '10.213.70.2', src_port: 4000, dest_port: 53, 'dns.name': 'exfil.x.invalid', 'dns.type': 'TXT' });
    expect(out[1]).toMatchObject({ dest_port: 53, 'dns.name': null, 'dns.error': 'short message (5 bytes, a DNS header has 12)', 'dns.payload': Buffer.from('exfil').toString('hex') });
    expect(out[2]).toMatchObject({ dest_port: 5353, 'dns.name': 'shaped.invalid', 'dns.type': 'A' });
    expect(out[3]).not.toHaveProperty('dns.name');
    expect(out[3]).not.toHaveProperty('dns.error');
    expect(out[4]).toMatchObject({ 'ip.protocol': 6, dest_port: 53, 'dns.name': null });
    expect(String(out[4]!['dns.error'])).toMatch(/no DNS message/);
    expect(out[5]).toMatchObject({ 'ip.protocol': 1, 'icmp.type': 8 });
  });

  it('a truncated or garbage packet gives what could be read, never an exception', async () => {
    const out = (await run([Buffer.alloc(0), Buffer.from([0x45, 0]), ipv4(17, Buffer.from([0, 1])), ipv4(17, udp(1, 53, Buffer.alloc(0)))])) as Array<Record<string, unknown>>;
    expect(out[0]).toEqual({});
    expect(out[1]).toEqual({});
    expect(out[2]).toMatchObject({ 'ip.protocol': 17 });
    expect(out[3]).toMatchObject({ dest_port: 53, 'dns.name': null });
  });
});
