// The audit accounts for every attempt at any packet rate, and records the DNS name of every
// packet that carries one (issue 17), against the real sentry: a flood at full rate to the DNS
// port, DNS queries sent straight to a resolver of the test's own (a decoy on a network the test
// made), malformed DNS payloads, and a DNS-shaped packet to another port.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import type { RunRecord } from '../../src/runs/registry.js';
import { OCSF_FIXTURE, OcsfSchema } from '../ocsf/validate.js';
import { type Decoy, beginTestRun, cli, endTestRun, parseJsonLines, remaining, startDecoy, testRunId } from './helpers.js';

const schema = new OcsfSchema(OCSF_FIXTURE);
const count = (rs: AuditRecord[]): number => rs.reduce((n, r) => n + r.count, 0);

async function auditOf(runId: string): Promise<AuditRecord[]> {
  const res = await cli(['audit', '--run', runId, '--json']);
  expect(res.exitCode, res.all).toBe(0);
  return parseJsonLines<AuditRecord>(res.stdout);
}

/** A DNS query message: header (id, RD, one question) + name + type + class IN. */
const QUERY_JS = `
  const query = (id, name, type = 1) => {
    const parts = [Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
    for (const l of name.split('.')) parts.push(Buffer.from([l.length]), Buffer.from(l));
    parts.push(Buffer.from([0, type >> 8, type & 255, 0, 1]));
    return Buffer.concat(parts);
  };`;

describe('audit accounting and DNS names from packets (real Docker, real sentry)', () => {
  const runId = testRunId('acct');
  let record: RunRecord;
  let decoy: Decoy;

  beforeAll(async () => {
    record = await beginTestRun(runId);
    decoy = await startDecoy(runId);
  });

  afterAll(async () => {
    if (record) await endTestRun(record);
  });

  it('a DNS flood at full rate is accounted in full (records + aggregates + lost >= sent), and the attempt after it is recorded', async () => {
    const sandboxRun = `${runId}-flood`;
    // As fast as the kernel accepts them, for 4 s or 1,000,000 queries: bursts of 500 per
    // setImmediate, each a long name; only sends the kernel accepted are counted as sent.
    const script = `${QUERY_JS}
      const dgram = require('dgram'), net = require('net');
      const s = dgram.createSocket('udp4');
      const label = 'x'.repeat(60);
      const until = Date.now() + 4000;
      let sent = 0, failed = 0, i = 0;
      const burst = () => {
        for (let k = 0; k < 500 && i < 1000000; k++, i++) {
          s.send(query(i & 65535, label + '.' + i + '.flood-${runId}.invalid'), 53, '127.0.0.11', (e) => { if (e) failed++; else sent++; });
        }
        if (Date.now() < until && i < 1000000) setImmediate(burst);
        else setTimeout(after, 500);
      };
      const after = () => {
        console.log(JSON.stringify({ sent, failed, tried: i }));
        s.close();
        const c = net.connect({ host: '${decoy.v4}', port: ${decoy.port} });
        c.on('error', () => process.exit(0));
        c.on('connect', () => process.exit(3));
      };
      burst();`;
    const res = await cli(['sandbox', 'run', '--run-id', sandboxRun, '--task', 'flood', '--attach-network', decoy.network, '--', 'node', '-e', script], { timeoutMs: 180_000 });
    expect(res.exitCode, res.all).toBe(0);
    const sent = parseJsonLines<{ sent: number; failed: number; tried: number }>(res.stdout)[0]!;
    expect(sent.sent, res.stdout).toBeGreaterThan(20_000);
    const audit = await auditOf(sandboxRun);
    const dns = audit.filter((r) => r.kind === 'dns');
    const lost = audit.filter((r) => r.kind === 'loss');
    for (const r of lost) expect(r).toMatchObject({ verdict: 'lost', task: 'flood', loss: { source: expect.any(String) as string } });
    // Every query the agent sent is in a record, an aggregate, or a loss record naming the
    // counter that saw it.
    expect(count(dns) + count(lost.filter((r) => r.rule === 'dns-front')), JSON.stringify(lost)).toBeGreaterThanOrEqual(sent.sent);
    expect(dns.filter((r) => !r.aggregate).length).toBeLessThanOrEqual(1000);
    // The attempt after the flood: one record of its own.
    expect(audit.find((r) => r.kind === 'packet' && r.protocol === 'tcp' && r.dst === decoy.v4 && r.dstPort === decoy.port && !r.aggregate)).toMatchObject({ verdict: 'rejected', rule: 'out-tcp', uid: 1000 });
    const verify = await cli(['audit', 'verify', '--run', sandboxRun]);
    expect(verify.exitCode, verify.all).toBe(0);
    expect(await remaining(sandboxRun)).toEqual([]);
  });

  it('a query sent straight to another resolver, or to a DNS-shaped port, is recorded with its name; malformed payloads give a parse error, never a crash', async () => {
    const sandboxRun = `${runId}-direct`;
    const name = `direct-${runId}.invalid`;
    const shaped = `shaped-${runId}.invalid`;
    // The decoy stands in for an outside resolver: it is on a network the test made. Port 53,
    // then a DNS message to a port that is not 53, then two malformed messages to port 53: a
    // compression pointer that points at itself, and a header that claims 65535 questions with a
    // label running past the end. Then a look-up through the sandbox's own resolver still works.
    const script = `${QUERY_JS}
      const dgram = require('dgram'), dns = require('dns');
      const s = dgram.createSocket('udp4');
      const loop = Buffer.from([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]);
      const huge = Buffer.concat([Buffer.from([0, 8, 1, 0, 255, 255, 0, 0, 0, 0, 0, 0, 63]), Buffer.from('abc')]);
      const sends = [[query(1, '${name}', 16), 53], [query(2, '${shaped}'), 5353], [loop, 53], [huge, 53]];
      let n = 0;
      for (const [m, port] of sends) s.send(m, port, '${decoy.v4}', () => { if (++n === sends.length) look(); });
      function look() {
        dns.lookup('after-${runId}.invalid', (e) => { console.log('lookup=' + (e ? e.code : 'ok')); s.close(); setTimeout(() => process.exit(0), 300); });
      }`;
    const res = await cli(['sandbox', 'run', '--run-id', sandboxRun, '--task', 'direct', '--iteration', '4', '--attach-network', decoy.network, '--', 'node', '-e', script], { timeoutMs: 120_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stdout).toContain('lookup=ENOTFOUND');
    const audit = await auditOf(sandboxRun);
    const dns = audit.filter((r) => r.kind === 'dns');
    expect(dns.find((r) => r.query === name)).toMatchObject({ verdict: 'rejected', rule: 'out-udp', protocol: 'udp', dst: decoy.v4, dstPort: 53, queryType: 'TXT', uid: 1000, iteration: 4 });
    expect(dns.find((r) => r.query === shaped)).toMatchObject({ verdict: 'rejected', dst: decoy.v4, dstPort: 5353, queryType: 'A' });
    const errors = dns.filter((r) => r.dnsError);
    expect(errors.map((r) => r.dnsError).sort(), JSON.stringify(dns)).toEqual(['compression pointer loop', 'label of 63 bytes runs past the end of the message']);
    for (const r of errors) expect(r).toMatchObject({ query: null, dstPort: 53, verdict: 'rejected', payload: expect.stringMatching(/^[0-9a-f]+$/) as string });
    // The sentry lived through it: the look-up after the malformed ones was answered and logged.
    expect(dns.find((r) => r.query === `after-${runId}.invalid`)).toMatchObject({ verdict: 'nxdomain' });
    // And in OCSF: DNS Activity (4003) with the name, the resolver it was aimed at, valid.
    const ocsf = await cli(['audit', '--run', sandboxRun, '--format', 'ocsf']);
    expect(ocsf.exitCode, ocsf.all).toBe(0);
    const events = parseJsonLines<Record<string, unknown>>(ocsf.stdout);
    for (const e of events) expect(schema.validate(e)).toEqual([]);
    const direct = events.find((e) => (e.query as { hostname?: string } | undefined)?.hostname === name);
    expect(direct).toMatchObject({ class_uid: 4003, disposition: 'Blocked', dst_endpoint: { ip: decoy.v4, port: 53 } });
    expect(await remaining(sandboxRun)).toEqual([]);
  });
});
