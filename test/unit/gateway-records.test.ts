import { mkdtemp, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ingestSandboxAudit } from '../../src/egress/ingest.js';
import type { DockerClient } from '../../src/docker/client.js';
import { SENTRY_DAEMON_UIDS, type Sentry, runAgent } from '../../src/sandbox/sandbox.js';
import { GATEWAY_FILE, parseGatewayLine, readGatewayRecords, sumUsage } from '../../src/egress/gateway-records.js';

const id = { runId: 'r1', task: 't', iteration: 2 };
const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});
async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'lbx-gwr-'));
  dirs.push(d);
  return d;
}

describe('gateway records', () => {
  it('parses a request line and attributes it; junk is not a record', () => {
    const r = parseGatewayLine('{"time":"2026-11-28T06:26:42.662Z","method":"POST","path":"/v1/chat/completions","status":200,"durationMs":186.2,"promptTokens":18,"cachedTokens":17,"completionTokens":5}', id);
    expect(r).toMatchObject({ runId: 'r1', task: 't', iteration: 2, status: 200, promptTokens: 18, cachedTokens: 17, completionTokens: 5, denied: null });
    expect(parseGatewayLine('not json', id)).toBeUndefined();
    expect(parseGatewayLine('{"time":"x","status":200}', id)).toBeUndefined();
    expect(parseGatewayLine('{"time":"2026-11-28T06:26:42.662Z","status":-1}', id)).toBeUndefined();
  });

  it('sums tokens with cached prompt tokens apart; the budget counts uncached prompt + completion', () => {
    const line = (p: number, c: number, o: number, extra = ''): string =>
      `{"time":"2026-11-28T06:26:42.662Z","method":"POST","path":"/v1/completions","status":200,"durationMs":1,"promptTokens":${p},"cachedTokens":${c},"completionTokens":${o}${extra}}`;
    const reqs = [line(18, 0, 5), line(20, 17, 3)].map((l) => parseGatewayLine(l, id)!);
    reqs.push(parseGatewayLine('{"time":"2026-11-28T06:26:43.000Z","method":"POST","path":"/v1/completions","status":429,"durationMs":0.2,"denied":"token-budget"}', id)!);
    expect(sumUsage(reqs)).toEqual({ requests: 3, denied: 1, promptTokens: 38, cachedTokens: 17, completionTokens: 8, tokens: 18 + 3 + 5 + 3, budgetExceeded: true });
  });

  it('reads only complete lines after the offset; refusals become model-denied audit records', async () => {
    const dir = await tmp();
    const file = path.join(dir, GATEWAY_FILE);
    await writeFile(file, '{"time":"2026-11-28T06:26:42.630Z","method":"GET","path":"/slots","status":403,"durationMs":1.5,"denied":"path"}\ngarbage\n{"time":"2026-11-28T06:26:4');
    const first = await readGatewayRecords(dir, id, 'agent', 0, { ip: '10.0.0.2', port: 8080 });
    expect(first.requests).toHaveLength(1);
    expect(first.malformed).toBe(1);
    expect(first.audit).toEqual([
      expect.objectContaining({ kind: 'model-denied', query: '/slots', queryType: 'GET', verdict: 'denied', rule: 'gateway 403 path', dst: '10.0.0.2', dstPort: 8080, iteration: 2 }),
    ]);
    await appendFile(file, '5.000Z","method":"GET","path":"/v1/models","status":200,"durationMs":1}\n');
    const second = await readGatewayRecords(dir, { ...id, iteration: 3 }, 'agent', first.offset, undefined);
    expect(second.requests.map((r) => [r.path, r.iteration])).toEqual([['/v1/models', 3]]);
    expect(second.audit).toEqual([]);
    expect((await readGatewayRecords(path.join(dir, 'none'), id, 'agent', 0, undefined)).requests).toEqual([]);
  });
});

describe('DNS front records', () => {
  it('ingest keeps escaped names as logged, lower-cases ASCII only, counts the answered names apart', async () => {
    const dir = await tmp();
    await writeFile(
      path.join(dir, 'dns.jsonl'),
      [
        '{"time":"2026-11-28T06:40:00.100Z","proto":"udp","from":"127.0.0.1","port":4000,"name":"\\\\001\\\\255A\\\\032.Exfil.invalid","type":"TXT"}',
        '{"time":"2026-11-28T06:40:00.200Z","proto":"udp","from":"127.0.0.1","port":4001,"name":"MODEL","type":"A"}',
        '{"time":"2026-11-28T06:40:00.300Z","proto":"tcp","from":"127.0.0.1","port":4002,"name":null,"type":null,"raw":"00ff"}',
        '',
      ].join('\n'),
    );
    const read = await ingestSandboxAudit(dir, id, 'agent', undefined, ['model']);
    expect(read.traffic.dnsAnswered).toBe(1);
    expect(read.cursor.dnsFrontBytes).toBeGreaterThan(0);
    expect(read.records.map((r) => [r.query, r.queryType, r.verdict])).toEqual([
      ['\\001\\255a\\032.exfil.invalid', 'TXT', 'nxdomain'],
      [null, 'unknown', 'nxdomain'],
    ]);
    // An unreadable question keeps its bytes as evidence, and says so.
    expect(read.records[1]).toMatchObject({ dnsError: 'question could not be read', payload: '00ff' });
  });
});

describe('gateway configuration', () => {
  it('model.maxRequestBody and model.maxTokens have defaults; an https model.endpoint is refused with the reason', () => {
    const config = parseConfig({ model: { maxRequestBody: '64k' } });
    expect(config.model.maxRequestBody).toBe(64 * 1024);
    expect(config.model.maxTokens).toBe(32768);
    expect(() => parseConfig({ model: { endpoint: 'https://llm.example:8443/v1' } })).toThrow(/model\.endpoint.*http:\/\//s);
    expect(parseConfig({ model: { endpoint: 'http://10.0.0.5:8080/v1' } }).model.endpoint).toBe('http://10.0.0.5:8080/v1');
  });
});

describe('agent uid', () => {
  it('refuses to run an agent as a uid the sentry firewall trusts (gateway, DNS front), before touching Docker', async () => {
    const untouched = new Proxy({}, { get: () => { throw new Error('docker was used'); } }) as unknown as DockerClient;
    for (const uid of SENTRY_DAEMON_UIDS) {
      await expect(runAgent(untouched, untouched as unknown as Sentry, { runId: 'r', cmd: ['true'], user: `${uid}:${uid}`, limits: { memoryBytes: 1, cpus: 1, pids: 16 } })).rejects.toThrow(
        new RegExp(`cannot run as uid ${uid}`),
      );
    }
  });
});
