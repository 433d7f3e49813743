// DNS the agent cannot hide (issue 8, item 2), against the real sentry: the agent cannot bind
// the resolver's (or the gateway's) port to take queries before they are logged, and a
// look-up sent straight to Docker's embedded resolver on its real port is refused and logged,
// and a name with unprintable bytes is logged with those bytes, escaped.
import { describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { cli, parseJsonLines, remaining, testRunId, useTestRun } from './helpers.js';

async function auditOf(runId: string): Promise<AuditRecord[]> {
  const res = await cli(['audit', '--run', runId, '--json']);
  expect(res.exitCode, res.all).toBe(0);
  return parseJsonLines<AuditRecord>(res.stdout);
}

describe('sandbox DNS (real Docker)', () => {
  useTestRun('dns');

  it('the agent cannot bind 127.0.0.1:53 (or the gateway port) beside the resolver, and its look-up is logged', async () => {
    const runId = testRunId('dns-bind');
    const name = `steal-${runId}.invalid`;
    // dnsmasq binds with SO_REUSEADDR: with the namespace's port floor at 0, a uid-1000 socket
    // with SO_REUSEADDR could bind the same address and read queries first.
    const script = `
      const dgram = require('dgram'), net = require('net'), dns = require('dns');
      const out = (o) => console.log(JSON.stringify(o));
      const udp = (port) => new Promise((resolve) => {
        const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
        s.on('message', () => out({ stolen: port }));
        s.once('error', (e) => resolve(e.code));
        s.bind(port, '127.0.0.1', () => resolve('bound'));
      });
      const tcp = (port) => new Promise((resolve) => {
        const s = net.createServer();
        s.once('error', (e) => resolve(e.code));
        s.listen(port, '127.0.0.1', () => resolve('bound'));
      });
      (async () => {
        out({ name: 'udp53', result: await udp(53) });
        out({ name: 'tcp53', result: await tcp(53) });
        out({ name: 'tcp81', result: await tcp(81) });
        dns.lookup('${name}', (e) => { out({ name: 'lookup', result: e ? e.code : 'ok' }); setTimeout(() => process.exit(0), 300); });
      })();`;
    const res = await cli(['sandbox', 'run', '--run-id', runId, '--task', 'dns', '--', 'node', '-e', script]);
    expect(res.exitCode, res.all).toBe(0);
    const lines = parseJsonLines<{ name?: string; result?: string; stolen?: number }>(res.stdout);
    const result = (n: string): string | undefined => lines.find((l) => l.name === n)?.result;
    expect(result('udp53')).toBe('EACCES');
    expect(result('tcp53')).toBe('EACCES');
    expect(result('tcp81')).toBe('EACCES');
    expect(lines.some((l) => l.stolen !== undefined)).toBe(false);
    expect(result('lookup')).toBe('ENOTFOUND');
    const audit = await auditOf(runId);
    expect(audit.some((r) => r.kind === 'dns' && r.query === name && r.verdict === 'nxdomain')).toBe(true);
    expect(await remaining(runId)).toEqual([]);
  });

  it("a query to Docker's embedded resolver on its real port is refused and logged, not answered", async () => {
    const runId = testRunId('dns-embedded');
    // The embedded resolver answers container names (here the model server's, on the model
    // network) on 127.0.0.11:<random>, and nothing logs it. Its ports are in /proc/net/{udp,tcp}.
    const script = `
      const fs = require('fs'), dgram = require('dgram'), net = require('net');
      const out = (o) => console.log(JSON.stringify(o));
      const portOf = (file, state) => {
        for (const line of fs.readFileSync(file, 'utf8').split('\\n').slice(1)) {
          const f = line.trim().split(/\\s+/);
          if (f[1] && f[1].startsWith('0B00007F:') && f[3] === state) return parseInt(f[1].split(':')[1], 16);
        }
      };
      const udpPort = portOf('/proc/net/udp', '07'), tcpPort = portOf('/proc/net/tcp', '0A');
      const q = Buffer.concat([Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        Buffer.from([13]), Buffer.from('loopbox-model'), Buffer.from([0, 0, 1, 0, 1])]);
      const s = dgram.createSocket('udp4');
      const t = setTimeout(() => { out({ name: 'udp', port: udpPort, result: 'no answer' }); s.close(); tcp(); }, 3000);
      s.on('message', (m) => { clearTimeout(t); out({ name: 'udp', port: udpPort, result: 'answered', answers: m.readUInt16BE(6) }); s.close(); tcp(); });
      s.on('error', () => {});
      s.send(q, udpPort, '127.0.0.11');
      function tcp() {
        const c = net.connect({ host: '127.0.0.11', port: tcpPort });
        c.setTimeout(3000, () => { out({ name: 'tcp', port: tcpPort, result: 'timeout' }); process.exit(0); });
        c.on('connect', () => { out({ name: 'tcp', port: tcpPort, result: 'connected' }); process.exit(0); });
        c.on('error', (e) => { out({ name: 'tcp', port: tcpPort, result: e.code }); process.exit(0); });
      }`;
    const res = await cli(['sandbox', 'run', '--run-id', runId, '--task', 'dns', '--iteration', '2', '--', 'node', '-e', script]);
    expect(res.exitCode, res.all).toBe(0);
    const lines = parseJsonLines<{ name: string; port: number; result: string }>(res.stdout);
    const udp = lines.find((l) => l.name === 'udp');
    const tcp = lines.find((l) => l.name === 'tcp');
    expect(udp?.port, res.stdout).toBeGreaterThan(0);
    expect(udp?.result, res.stdout).toBe('no answer');
    expect(tcp?.result, res.stdout).toBe('ECONNREFUSED');
    const audit = await auditOf(runId);
    const toResolver = (protocol: string, port: number): AuditRecord | undefined =>
      audit.find((r) => r.protocol === protocol && r.dst === '127.0.0.11' && r.dstPort === port);
    // The UDP query carried a name: the record has it (issue 17), with the firewall's verdict.
    expect(toResolver('udp', udp!.port)).toMatchObject({ kind: 'dns', query: 'loopbox-model', queryType: 'A', uid: 1000, verdict: 'rejected', rule: 'out-resolver', iteration: 2, task: 'dns' });
    expect(toResolver('tcp', tcp!.port)).toMatchObject({ kind: 'packet', uid: 1000, verdict: 'rejected', rule: 'out-resolver' });
    expect(await remaining(runId)).toEqual([]);
  });

  it('a name with unprintable bytes is logged escaped, byte for byte, not as "<name unprintable>"', async () => {
    const runId = testRunId('dns-bytes');
    // One label carrying bytes 0x01 0xff 'A' ' ' '.' '\\' then "<run>.invalid"; over udp and tcp.
    const script = `
      const dgram = require('dgram'), net = require('net');
      const label = Buffer.from([0x01, 0xff, 0x41, 0x20, 0x2e, 0x5c]);
      const tail = ['${runId}', 'invalid'].map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
      const q = (id) => Buffer.concat([Buffer.from([0, id, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, label.length]), label, ...tail, Buffer.from([0, 0, 16, 0, 1])]);
      const s = dgram.createSocket('udp4');
      const t = setTimeout(() => { console.log('udp=timeout'); s.close(); viaTcp(); }, 3000);
      s.on('message', (m) => { clearTimeout(t); console.log('udp=rcode' + (m[3] & 15)); s.close(); viaTcp(); });
      s.send(q(1), 53, '127.0.0.11');
      function viaTcp() {
        const m = q(2), c = net.connect({ host: '127.0.0.11', port: 53 });
        c.on('connect', () => c.write(Buffer.concat([Buffer.from([0, m.length]), m])));
        c.on('data', (d) => { console.log('tcp=rcode' + (d[5] & 15)); process.exit(0); });
        c.on('error', (e) => { console.log('tcp=' + e.code); process.exit(0); });
        c.setTimeout(3000, () => { console.log('tcp=timeout'); process.exit(0); });
      }`;
    const res = await cli(['sandbox', 'run', '--run-id', runId, '--task', 'dns', '--', 'node', '-e', script]);
    expect(res.exitCode, res.all).toBe(0);
    // NXDOMAIN (rcode 3) both ways: the front relays dnsmasq's answer.
    expect(res.stdout).toContain('udp=rcode3');
    expect(res.stdout).toContain('tcp=rcode3');
    const audit = await auditOf(runId);
    const expected = `\\001\\255a\\032\\.\\\\.${runId}.invalid`;
    const dns = audit.filter((r) => r.kind === 'dns');
    expect(dns.map((r) => r.query), JSON.stringify(dns)).toEqual([expected, expected]);
    for (const r of dns) expect(r).toMatchObject({ queryType: 'TXT', verdict: 'nxdomain', task: 'dns' });
    expect(await remaining(runId)).toEqual([]);
  });
});
