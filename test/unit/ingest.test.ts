import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { verifyAuditChain } from '../../src/audit/chain.js';
import { queryAudit, sealAudit } from '../../src/audit/log.js';
import { recoverAuditDir } from '../../src/sandbox/sandbox.js';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createWriteStream } from 'node:fs';
import { DNS_FILE, PACKETS_FILE, RecordLimiter, START_CURSOR, ingestSandboxAudit, packetRecord, parseCounters, parseDnsLog, streamLines } from '../../src/egress/ingest.js';

// Real lines as ulogd2 2.0.8 (JSON output) and dnsmasq (log-queries=extra) wrote them in the sentry.
const TCP = '{"timestamp": "2026-11-24T18:30:25.655729", "dvc": "Netfilter", "raw.pktlen": 60, "raw.pktcount": 1, "oob.prefix": "out-tcp", "oob.time.sec": 1795545025, "oob.time.usec": 655729, "oob.mark": 0, "oob.ifindex_out": 97, "oob.hook": 3, "oob.family": 2, "oob.protocol": 2048, "oob.uid": 1000, "oob.gid": 1000, "raw.label": 0, "ip.protocol": 6, "src_port": 41974, "dest_port": 9000, "tcp.syn": 1, "oob.in": "", "oob.out": "eth0", "src_ip": "172.20.0.3", "dest_ip": "172.20.0.2"}';
const ICMP = '{"timestamp": "2026-11-24T18:30:25.664859", "oob.prefix": "out-icmp", "oob.time.sec": 1795545025, "oob.time.usec": 664859, "oob.family": 2, "oob.uid": 1000, "ip.protocol": 1, "icmp.type": 8, "icmp.code": 0, "src_ip": "172.20.0.3", "dest_ip": "172.20.0.2"}';
const V6 = '{"timestamp": "2026-11-24T18:30:26.685504", "oob.prefix": "out6-tcp", "oob.time.sec": 1795545026, "oob.time.usec": 685504, "oob.family": 10, "oob.uid": 1000, "ip.protocol": 6, "ip6.nexthdr": 6, "src_port": 51610, "dest_port": 9000, "src_ip": "fd42:4242:4242::3", "dest_ip": "fd42:4242:4242::2"}';
const INBOUND = '{"oob.prefix": "in", "oob.time.sec": 1795545027, "oob.time.usec": 0, "oob.family": 2, "ip.protocol": 17, "src_port": 5000, "dest_port": 6000, "src_ip": "172.20.0.9", "dest_ip": "172.20.0.3"}';
const DNS = [
  'Nov 24 18:30:25 dnsmasq[42]: 1 127.0.0.1/40198 query[A] model from 127.0.0.1',
  'Nov 24 18:30:25 dnsmasq[42]: 1 127.0.0.1/40198 config model is 172.19.0.2',
  'Nov 24 18:30:26 dnsmasq[42]: 6 127.0.0.1/35322 query[A] foo.invalid from 127.0.0.1',
  'Nov 24 18:30:26 dnsmasq[42]: 6 127.0.0.1/35322 config foo.invalid is NXDOMAIN',
  'Nov 24 18:30:27 dnsmasq[42]: 7 127.0.0.1/35323 query[AAAA] we ird.invalid from 127.0.0.1',
].join('\n') + '\n';

const id = { runId: 'r1', task: 't', iteration: 2 };

describe('audit ingestion', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('maps ulogd JSON to records with exact time, protocol, family, direction and uid', () => {
    expect(packetRecord(JSON.parse(TCP) as Record<string, unknown>, id, 'agent')).toMatchObject({
      time: '2026-11-24T18:30:25.655Z',
      runId: 'r1', task: 't', iteration: 2, role: 'agent', kind: 'packet',
      protocol: 'tcp', family: 'ipv4', direction: 'out', src: '172.20.0.3', srcPort: 41974, dst: '172.20.0.2', dstPort: 9000,
      uid: 1000, verdict: 'rejected', rule: 'out-tcp', count: 1,
    });
    expect(packetRecord(JSON.parse(ICMP) as Record<string, unknown>, id, 'agent')).toMatchObject({ protocol: 'icmp', icmpType: 8, dstPort: null });
    expect(packetRecord(JSON.parse(V6) as Record<string, unknown>, id, 'agent')).toMatchObject({ family: 'ipv6', protocol: 'tcp', dst: 'fd42:4242:4242::2' });
    expect(packetRecord(JSON.parse(INBOUND) as Record<string, unknown>, id, 'agent')).toMatchObject({ direction: 'in', uid: null, protocol: 'udp' });
  });

  it('parses dnsmasq query lines, names with spaces included', () => {
    const queries = parseDnsLog(DNS, 2026);
    expect(queries.map((q) => [q.name, q.type])).toEqual([
      ['model', 'A'],
      ['foo.invalid', 'A'],
      ['we ird.invalid', 'AAAA'],
    ]);
    expect(queries[1]).toMatchObject({ time: '2026-11-24T18:30:26.000Z', from: '127.0.0.1', port: 35322 });
  });

  it('ingests a sandbox folder: answered names are counted, others logged, and a shortfall becomes a loss record', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
    dirs.push(dir);
    await writeFile(path.join(dir, PACKETS_FILE), `${TCP}\n${ICMP}\nnot json\n`);
    await writeFile(path.join(dir, DNS_FILE), DNS);
    const res = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 12, bytes: 900 }, logged: { packets: 5 } }, ['model']);
    expect(res.records.filter((r) => r.kind === 'packet')).toHaveLength(2);
    expect(res.records.filter((r) => r.kind === 'dns').map((r) => r.query)).toEqual(['foo.invalid', 'we ird.invalid']);
    const loss = res.records.find((r) => r.kind === 'loss');
    // 5 logged by the firewall, 3 lines arrived of which 1 is unreadable: 2 + 1 lost.
    expect(loss).toMatchObject({ verdict: 'lost', count: 3 });
    expect(res.traffic).toEqual({ allowedPackets: 12, allowedBytes: 900, blockedPackets: 5, dnsBlocked: 2, dnsAnswered: 1, lostRecords: 3, blockedByRule: { 'out-tcp': 1, 'out-icmp': 1, dns: 2 }, lostByRule: { nflog: 3 } });
  });

  it('records no loss when every logged packet arrived, and tolerates missing files', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
    dirs.push(dir);
    const empty = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 0, bytes: 0 }, logged: { packets: 0 } }, []);
    expect(empty.records).toEqual([]);
    await writeFile(path.join(dir, PACKETS_FILE), `${TCP}\n`);
    const one = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 0, bytes: 0 }, logged: { packets: 1 } }, []);
    expect(one.records.map((r) => r.kind)).toEqual(['packet']);
  });

  it('attributes each read to its own iteration when one sentry serves several', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
    dirs.push(dir);
    await writeFile(path.join(dir, PACKETS_FILE), `${TCP}\n`);
    await writeFile(path.join(dir, DNS_FILE), `${DNS.split('\n')[2]}\n`);
    const first = await ingestSandboxAudit(dir, { ...id, iteration: 1 }, 'agent', { allowed: { packets: 4, bytes: 400 }, logged: { packets: 1 } }, ['model']);
    expect(first.records.map((r) => [r.kind, r.iteration])).toEqual([['packet', 1], ['dns', 1]]);
    // Iteration 2 appends one packet (and half a line the writer has not finished).
    await writeFile(path.join(dir, PACKETS_FILE), `${TCP}\n${ICMP}\n{"oob.pre`);
    await writeFile(path.join(dir, DNS_FILE), `${DNS.split('\n')[2]}\n${DNS.split('\n')[4]}\n`);
    const second = await ingestSandboxAudit(dir, { ...id, iteration: 2 }, 'agent', { allowed: { packets: 10, bytes: 1000 }, logged: { packets: 2 } }, ['model'], first.cursor);
    expect(second.records.map((r) => [r.kind, r.iteration, r.protocol])).toEqual([['packet', 2, 'icmp'], ['dns', 2, 'dns']]);
    expect(second.traffic).toMatchObject({ allowedPackets: 6, allowedBytes: 600, blockedPackets: 1, lostRecords: 0 });
    expect(second.cursor.packetLines).toBe(2);
  });

  it('reads the counters line and rejects anything else', () => {
    expect(parseCounters('{"allowed":{"packets":6,"bytes":403},"logged":{"packets":7}}\n')).toEqual({ allowed: { packets: 6, bytes: 403 }, logged: { packets: 7 } });
    expect(parseCounters('iptables: oops')).toBeUndefined();
  });

  it('streams lines across chunk boundaries, leaves an unfinished line for later, and flags over-long lines', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
    dirs.push(dir);
    const file = path.join(dir, 'x');
    const long = 'a'.repeat(100_000);
    const mid = 'é'.repeat(30_000); // two-byte characters, one of them split by the 64 KiB chunk edge
    const one = 'b'.repeat(40_000);
    await writeFile(file, `${one}\n${mid}\n${long}\ntwo\npart`);
    const got: (string | null)[] = [];
    const res = await streamLines(file, 0, (l) => got.push(l));
    expect(got).toEqual([one, mid, null, 'two']);
    expect(res).toEqual({ lines: 4, bytes: Buffer.byteLength(`${one}\n${mid}\n${long}\ntwo\n`) });
    const rest: (string | null)[] = [];
    await writeFile(file, `${one}\n${mid}\n${long}\ntwo\npart-done\n`);
    await streamLines(file, res.bytes, (l) => rest.push(l));
    expect(rest).toEqual(['part-done']);
  });

  it('a DNS flood becomes limited records plus a counted aggregate: every query accounted, memory and output bounded', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
    dirs.push(dir);
    const N = 120_000;
    const out = createWriteStream(path.join(dir, DNS_FILE));
    for (let i = 0; i < N; i += 1) {
      out.write(`Nov 24 18:${String(30 + Math.floor(i / 60_000)).padStart(2, '0')}:${String(Math.floor(i / 1000) % 60).padStart(2, '0')} dnsmasq[42]: ${i} 127.0.0.1/40198 query[A] q${i}.flood.invalid from 127.0.0.1\n`);
      out.write(`Nov 24 18:30:00 dnsmasq[42]: ${i} 127.0.0.1/40198 config q${i}.flood.invalid is NXDOMAIN\n`);
    }
    await new Promise<void>((r) => out.end(r));
    const pk = createWriteStream(path.join(dir, PACKETS_FILE));
    for (let i = 0; i < 1500; i += 1) pk.write(`${TCP.replace('"dest_port": 9000', `"dest_port": ${9000 + (i % 3)}`)}\n`);
    await new Promise<void>((r) => pk.end(r));
    const before = process.memoryUsage().heapUsed;
    const res = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 0, bytes: 0 }, logged: { packets: 1500 } }, ['model'], undefined, { recordLimit: 1000 });
    const grew = process.memoryUsage().heapUsed - before;
    const dns = res.records.filter((r) => r.kind === 'dns');
    const packets = res.records.filter((r) => r.kind === 'packet');
    expect(dns.filter((r) => !r.aggregate)).toHaveLength(1000);
    expect(packets.filter((r) => !r.aggregate)).toHaveLength(1000);
    const dnsAgg = dns.find((r) => r.aggregate)!;
    expect(dnsAgg).toMatchObject({ kind: 'dns', verdict: 'nxdomain', count: N - 1000, query: null, iteration: 2 });
    // 119,000 distinct names: counted exactly up to DISTINCT_CAP, then "at least".
    expect(dnsAgg.aggregate).toMatchObject({ distinct: 100_000, distinctCapped: true, limit: 1000, firstTime: '2026-11-24T18:30:01.000Z', lastTime: '2026-11-24T18:31:59.000Z' });
    expect(dnsAgg.aggregate!.sample).toEqual(Array.from({ length: 10 }, (_, i) => `q${1000 + i}.flood.invalid A`));
    const pAgg = packets.find((r) => r.aggregate)!;
    expect(pAgg).toMatchObject({ count: 500, verdict: 'rejected', rule: 'out-tcp', dst: null });
    expect(pAgg.aggregate).toMatchObject({ distinct: 3 });
    // Every attempt is accounted for, and the output is bounded by the limit, not the flood.
    expect(res.records.reduce((n, r) => n + r.count, 0)).toBe(N + 1500);
    expect(res.attempts).toBe(N + 1500);
    expect(res.records.length).toBe(2002);
    expect(res.traffic).toMatchObject({ dnsBlocked: N, blockedPackets: 1500, lostRecords: 0 });
    // The 120,000 distinct names are the only thing held; nothing like the file (~12 MB) per line.
    expect(grew).toBeLessThan(64 * 2 ** 20);
  });

  it('aggregates any record kind the same way, per kind, verdict and protocol', () => {
    const limiter = new RecordLimiter(2);
    const base = packetRecord(JSON.parse(TCP) as Record<string, unknown>, id, 'agent');
    for (let i = 0; i < 5; i += 1) limiter.add({ ...base, dstPort: i });
    for (let i = 0; i < 3; i += 1) limiter.add({ ...base, protocol: 'udp', rule: 'out-udp' });
    const out = limiter.finish();
    expect(out.filter((r) => !r.aggregate)).toHaveLength(4);
    expect(out.filter((r) => r.aggregate).map((r) => [r.protocol, r.count, r.aggregate!.distinct])).toEqual([['tcp', 3, 3], ['udp', 1, 1]]);
    // 200 unusual IP protocol numbers share one limit, not 200.
    const other = new RecordLimiter(2);
    for (let p = 0; p < 200; p += 1) other.add({ ...base, protocol: String(p + 30), rule: 'out-other' });
    const rest = other.finish();
    expect(rest).toHaveLength(3);
    expect(rest[2]).toMatchObject({ protocol: null, count: 198, rule: 'out-other' });
  });
});

describe('recovering a crashed sentry folder', () => {
  it('appends what is left to the chained log before it deletes the raw files, and keeps them when ingest fails', async () => {
    const state = await mkdtemp(path.join(tmpdir(), 'lbx-recover-'));
    const env = { LOOPBOX_STATE_DIR: state };
    try {
      const dir = path.join(state, 'runs', 'r1', 'sandboxes', 'sentry-1');
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, PACKETS_FILE), `${TCP}\n${ICMP}\n`);
      await writeFile(path.join(dir, DNS_FILE), DNS);
      // The first packet line was read before the crash; the rest was not.
      await writeFile(path.join(dir, '.cursor.json'), JSON.stringify({ packetLines: 1, packetBytes: TCP.length + 1, dnsBytes: 0, counters: { allowed: { packets: 0, bytes: 0 }, logged: { packets: 1 } } }));
      await recoverAuditDir(dir, { runId: 'r1', task: 't', iteration: 4 }, ['model'], env);
      expect(existsSync(dir)).toBe(false);
      await sealAudit('r1', env);
      const records = await queryAudit({ runId: 'r1' }, env);
      expect(records.map((r) => [r.kind, r.query ?? r.protocol, r.iteration])).toEqual([
        ['packet', 'icmp', 4],
        ['dns', 'foo.invalid', 4],
        ['dns', 'we ird.invalid', 4],
      ]);
      expect(await verifyAuditChain(path.join(state, 'runs', 'r1'), { env })).toMatchObject({ ok: true, records: 3, unsealed: 0 });

      // A folder whose raw files cannot be read stays, raw files and all, for a later attempt.
      const broken = path.join(state, 'runs', 'r1', 'sandboxes', 'sentry-2');
      await mkdir(path.join(broken, PACKETS_FILE), { recursive: true });
      await writeFile(path.join(broken, DNS_FILE), DNS);
      await expect(recoverAuditDir(broken, { runId: 'r1', task: 't', iteration: 5 }, ['model'], env)).rejects.toThrow(/EISDIR/);
      expect(existsSync(path.join(broken, DNS_FILE))).toBe(true);
    } finally {
      await rm(state, { recursive: true, force: true });
    }
  });

  describe('accounting at any rate (issue 17)', () => {
    const made: string[] = [];
    const track = (d: string): void => void made.push(d);
    afterEach(async () => {
      for (const d of made.splice(0)) await rm(d, { recursive: true, force: true });
    });
    const udp = (n: number, name: string | null, extra = ''): string =>
      `{"oob.family":2,"oob.prefix":"out-udp","oob.time.sec":1795545025,"oob.time.usec":${n},"oob.uid":1000,"ip.protocol":17,"src_ip":"172.20.0.3","dest_ip":"10.213.70.2","src_port":${4000 + n},"dest_port":53,"seq":${n},"dns.name":${JSON.stringify(name)},"dns.type":"A"${extra}}`;

    it('a packet that carried a DNS question is a dns record with the firewall verdict, its destination and the name', () => {
      const r = packetRecord(JSON.parse(udp(1, 'exfil-data.x.invalid')) as Record<string, unknown>, id, 'agent');
      expect(r).toMatchObject({ kind: 'dns', protocol: 'udp', dst: '10.213.70.2', dstPort: 53, query: 'exfil-data.x.invalid', queryType: 'A', verdict: 'rejected', rule: 'out-udp', uid: 1000 });
      const bad = packetRecord(JSON.parse(udp(2, null, ',"dns.error":"compression pointer loop","dns.payload":"1234c00c"')) as Record<string, unknown>, id, 'agent');
      expect(bad).toMatchObject({ kind: 'dns', query: null, dnsError: 'compression pointer loop', payload: '1234c00c', verdict: 'rejected' });
    });

    it('per rule: the firewall counter minus the records is a loss record naming the rule; sequence gaps say what the kernel dropped', async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
      track(dir);
      await writeFile(path.join(dir, PACKETS_FILE), [udp(1, 'a.invalid'), udp(2, 'b.invalid'), '{"gap":5}', udp(8, 'c.invalid'), TCP, ''].join('\n'));
      const counters = { allowed: { packets: 0, bytes: 0 }, logged: { packets: 11, rules: { 'out-udp': 10, 'out-tcp': 1 } } };
      const res = await ingestSandboxAudit(dir, id, 'agent', counters, []);
      const losses = res.records.filter((r) => r.kind === 'loss');
      expect(losses).toHaveLength(1);
      expect(losses[0]).toMatchObject({ rule: 'out-udp', count: 7, iteration: 2, loss: { source: 'nflog', counted: 10, recorded: 3, kernelDropped: 5 } });
      // records + aggregates + loss = what the firewall counted
      expect(res.attempts).toBe(11);
      expect(res.traffic.blockedByRule).toEqual({ 'out-udp': 3, 'out-tcp': 1 });
    });

    it("the DNS front's port counter minus its udp records is a dns-front loss, with the socket's kernel drops", async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
      track(dir);
      const line = (i: number, proto: string): string => `{"time":"2026-11-28T06:40:00.100Z","proto":"${proto}","from":"127.0.0.1","port":${5000 + i},"name":"q${i}.invalid","type":"A"}`;
      await writeFile(path.join(dir, 'dns.jsonl'), [...Array.from({ length: 40 }, (_, i) => line(i, 'udp')), ...Array.from({ length: 5 }, (_, i) => line(i, 'tcp')), ''].join('\n'));
      const before = { ...START_CURSOR, counters: { ...START_CURSOR.counters, dns: { udp: 10, tcp: 0, drops: 3 } } };
      const res = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 0, bytes: 0 }, logged: { packets: 0, rules: {} }, dns: { udp: 110, tcp: 20, drops: 53 } }, [], before, { recordLimit: 10 });
      const loss = res.records.find((r) => r.kind === 'loss');
      expect(loss).toMatchObject({ rule: 'dns-front', count: 60, loss: { source: 'dns-front', counted: 100, recorded: 40, kernelDropped: 50 } });
      // 10 records, one aggregate of 35, and the loss: 105 = 100 udp + 5 tcp queries
      expect(res.records.filter((r) => r.kind === 'dns')).toHaveLength(11);
      expect(res.attempts).toBe(105);
      expect(res.cursor.counters.dns).toEqual({ udp: 110, tcp: 20, drops: 53 });
    });

    it('a read without counters moves the per-rule counters on, so the next read does not count those records as lost', async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ingest-'));
      track(dir);
      await writeFile(path.join(dir, PACKETS_FILE), `${udp(1, 'a.invalid')}\n${udp(2, 'b.invalid')}\n`);
      const start = { ...START_CURSOR, counters: { allowed: { packets: 0, bytes: 0 }, logged: { packets: 0, rules: { 'out-udp': 0 } } } };
      const first = await ingestSandboxAudit(dir, id, 'agent', undefined, [], start);
      expect(first.cursor.counters.logged.rules).toEqual({ 'out-udp': 2 });
      await writeFile(path.join(dir, PACKETS_FILE), `${udp(1, 'a.invalid')}\n${udp(2, 'b.invalid')}\n${udp(3, 'c.invalid')}\n`);
      const second = await ingestSandboxAudit(dir, id, 'agent', { allowed: { packets: 0, bytes: 0 }, logged: { packets: 3, rules: { 'out-udp': 3 } } }, [], first.cursor);
      expect(second.records.filter((r) => r.kind === 'loss')).toEqual([]);
      expect(second.attempts).toBe(1);
    });

    it('parses the counters line of the sentry with per-rule and DNS front numbers; refuses junk', () => {
      expect(parseCounters('{"allowed":{"packets":1,"bytes":2},"logged":{"packets":3,"rules":{"out-udp":3,"bad":"x"}},"dns":{"udp":4,"tcp":5,"drops":6}}\n')).toEqual({
        allowed: { packets: 1, bytes: 2 },
        logged: { packets: 3, rules: { 'out-udp': 3 } },
        dns: { udp: 4, tcp: 5, drops: 6 },
      });
      expect(parseCounters('nonsense')).toBeUndefined();
    });
  });
});
