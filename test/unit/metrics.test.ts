// /metrics of `loopbox serve` (issue 17 item 3): what the loop events become, read back with a
// real Prometheus text parser, and who may read them (loopback, bearer token, never the webhook
// secret).
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { serveSchema } from '../../src/config/triggers.js';
import type { LoopEvent, LoopSummary } from '../../src/loop/loop.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { parseSlots } from '../../src/model/server.js';
import { iterationResult, LoopMetrics, type MetricsSources } from '../../src/triggers/metrics.js';
import { metricsTokenFromEnv, startServer, type TriggerServer, verifyBearer } from '../../src/triggers/serve.js';
import { histogram, parseScrape, samples, value } from '../prom.js';

const SECRET = 'test-secret-0123456789abcdef-0123456789';
const TOKEN = 'metrics-token-0123456789abcdef-01234567';

function record(over: Partial<IterationRecord> = {}): IterationRecord {
  return {
    iteration: 0,
    startedAt: '2026-12-07T00:00:00.000Z',
    endedAt: '2026-12-07T00:00:10.000Z',
    agent: { exitCode: 0, timedOut: false, durationMs: 5000 },
    tree: 'abc',
    filesChanged: [],
    protectedViolations: [],
    skipped: [],
    untrusted: null,
    verify: { passed: false, exitCode: 1, timedOut: false, durationMs: 3200, outputTail: '' },
    commit: null,
    verified: false,
    tokens: 0,
    audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0, records: 0 },
    modelDown: false,
    ...over,
  };
}

function summary(over: Partial<LoopSummary> = {}): LoopSummary {
  return {
    runId: 'run-secret-id-1',
    task: 'fix-tests',
    endState: 'done',
    reason: 'verified',
    exitCode: 0,
    iterations: 2,
    wallMs: 1,
    tokens: 0,
    blocked: 0,
    branch: 'loopbox/fix-tests',
    worktree: '/tmp/x',
    lastCommit: null,
    verifiedCommit: null,
    runDir: '/tmp/r',
    evidence: '-',
    ...over,
  };
}

function sources(over: Partial<MetricsSources> = {}): MetricsSources {
  return { loops: () => ({ running: 1, queued: 2 }), modelSlots: () => Promise.resolve({ busy: 1, total: 4 }), ...over };
}

const iterationEnd = (task: string, r: IterationRecord): LoopEvent => ({ type: 'iteration-end', runId: 'run-secret-id-1', task, record: r });

describe('LoopMetrics', () => {
  it('turns loop events into counters, a histogram and gauges that a Prometheus parser reads back', async () => {
    const m = new LoopMetrics(sources());
    m.observe({ type: 'loop-start', runId: 'run-secret-id-1', task: 'fix-tests', branch: 'b', worktree: 'w', resumedAt: 0 });
    m.observe(
      iterationEnd(
        'fix-tests',
        record({
          audit: {
            allowedPackets: 3,
            allowedBytes: 10,
            blockedPackets: 7,
            dnsBlocked: 2,
            dnsAnswered: 1,
            lostRecords: 5,
            records: 4,
            blockedByRule: { 'out-udp': 4, dns: 2 },
            lostByRule: { 'out-udp': 5 },
          },
          model: { promptTokens: 1000, cachedTokens: 400, completionTokens: 50, requests: 3, denied: 0 },
        }),
      ),
    );
    m.observe(
      iterationEnd(
        'fix-tests',
        record({
          verified: true,
          verify: { passed: true, exitCode: 0, timedOut: false, durationMs: 700, outputTail: '' },
          audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 1, dnsBlocked: 1, dnsAnswered: 0, lostRecords: 0, records: 1, blockedByRule: { dns: 1 } },
          model: { promptTokens: 200, cachedTokens: 0, completionTokens: 20, requests: 1, denied: 0 },
        }),
      ),
    );
    m.observe({ type: 'loop-end', summary: summary() });
    const text = await m.render();
    const s = parseScrape(text);

    expect(s.get('loopbox_iterations_total')?.type).toBe('COUNTER');
    expect(value(s, 'loopbox_iterations_total', { task: 'fix-tests', result: 'failed' })).toBe(1);
    expect(value(s, 'loopbox_iterations_total', { task: 'fix-tests', result: 'verified' })).toBe(1);
    expect(value(s, 'loopbox_loops_started_total', { task: 'fix-tests' })).toBe(1);
    expect(value(s, 'loopbox_loops_ended_total', { task: 'fix-tests', end_state: 'done' })).toBe(1);
    expect(value(s, 'loopbox_blocked_attempts_total', { task: 'fix-tests', rule: 'out-udp' })).toBe(4);
    expect(value(s, 'loopbox_blocked_attempts_total', { task: 'fix-tests', rule: 'dns' })).toBe(3);
    expect(value(s, 'loopbox_audit_lost_records_total', { task: 'fix-tests', rule: 'out-udp' })).toBe(5);
    expect(value(s, 'loopbox_model_tokens_total', { kind: 'input' })).toBe(1200);
    expect(value(s, 'loopbox_model_tokens_total', { kind: 'cached' })).toBe(400);
    expect(value(s, 'loopbox_model_tokens_total', { kind: 'output' })).toBe(70);
    expect(value(s, 'loopbox_model_requests_total', { task: 'fix-tests' })).toBe(4);
    expect(value(s, 'loopbox_loops', { state: 'running' })).toBe(1);
    expect(value(s, 'loopbox_loops', { state: 'queued' })).toBe(2);
    expect(value(s, 'loopbox_model_up')).toBe(1);
    expect(value(s, 'loopbox_model_slots_busy')).toBe(1);
    expect(value(s, 'loopbox_model_slots_total')).toBe(4);

    const hist = s.get('loopbox_verify_duration_seconds');
    expect(hist?.type).toBe('HISTOGRAM');
    const failed = histogram(text, 'loopbox_verify_duration_seconds', { task: 'fix-tests', result: 'failed' });
    expect(failed).toMatchObject({ count: '1', sum: '3.2' });
    expect(failed?.buckets?.['2.5']).toBe('0');
    expect(failed?.buckets?.['5']).toBe('1');
    expect(histogram(text, 'loopbox_verify_duration_seconds', { task: 'fix-tests', result: 'passed' })).toMatchObject({ count: '1', sum: '0.7' });
    // The serve process's own RSS, for the "peak memory" question.
    expect(value(s, 'loopbox_serve_process_resident_memory_bytes')).toBeGreaterThan(0);
    // Never a run id as a label (nor anywhere in the text).
    expect(text).not.toContain('run-secret-id-1');
  });

  it('keeps labels low-cardinality: odd rule names become "other", and at most 64 rules are kept', async () => {
    const m = new LoopMetrics(sources(), { processMetrics: false });
    const rules: Record<string, number> = { 'exfil.data.attacker.invalid\n{x="1"}': 1 };
    for (let i = 0; i < 100; i++) rules[`rule-${i}`] = 1;
    m.observe(iterationEnd('t', record({ audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 101, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0, records: 101, blockedByRule: rules } })));
    const s = parseScrape(await m.render());
    const blocked = samples(s, 'loopbox_blocked_attempts_total');
    expect(blocked.length).toBeLessThanOrEqual(65);
    expect(value(s, 'loopbox_blocked_attempts_total')).toBe(101);
    expect(value(s, 'loopbox_blocked_attempts_total', { rule: 'other' })).toBe(101 - 64 + 1);
    expect(blocked.some((b) => b.labels?.rule?.includes('invalid'))).toBe(false);
  });

  it('reports the model as down (0 slots) when /slots does not answer, and an older record without lostByRule as rule "unknown"', async () => {
    const m = new LoopMetrics(sources({ modelSlots: () => Promise.reject(new Error('connection refused')) }), { processMetrics: false });
    m.observe(iterationEnd('t', record({ audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 9, records: 0 } })));
    const s = parseScrape(await m.render());
    expect(value(s, 'loopbox_model_up')).toBe(0);
    expect(value(s, 'loopbox_model_slots_total')).toBe(0);
    expect(value(s, 'loopbox_audit_lost_records_total', { rule: 'unknown' })).toBe(9);
  });

  it('names the result of each kind of iteration', () => {
    expect(iterationResult(record({ verified: true, verify: { passed: true, exitCode: 0, timedOut: false, durationMs: 1, outputTail: '' } }))).toBe('verified');
    expect(iterationResult(record())).toBe('failed');
    expect(iterationResult(record({ verify: { passed: false, exitCode: 124, timedOut: true, durationMs: 1, outputTail: '' } }))).toBe('verify-timeout');
    expect(iterationResult(record({ verify: null }))).toBe('agent-failed');
    expect(iterationResult(record({ verify: null, untrusted: 'could not put back x' }))).toBe('untrusted');
    expect(iterationResult(record({ verify: null, modelDown: true }))).toBe('model-down');
  });

  it('reads busy and total slots from a llama-server /slots answer, and nothing from garbage', () => {
    expect(parseSlots(JSON.stringify([{ id: 0, is_processing: true }, { id: 1, is_processing: false }, { id: 2 }]))).toEqual({ busy: 1, total: 3 });
    expect(parseSlots('{"error":"slots disabled"}')).toBeUndefined();
    expect(parseSlots('not json')).toBeUndefined();
  });
});

describe('GET /metrics on loopbox serve', () => {
  const servers: TriggerServer[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.close();
  });

  async function serve(options: { host?: string; token?: string; metrics?: boolean } = {}): Promise<{ url: string; events: Array<Record<string, unknown>> }> {
    const events: Array<Record<string, unknown>> = [];
    const config = serveSchema.parse({ port: 0, host: options.host ?? '127.0.0.1' });
    const endpoint = new LoopMetrics(sources(), { processMetrics: false });
    const server = await startServer({
      config,
      secret: SECRET,
      starter: { start: () => Promise.resolve({ started: true, runId: 'r' }) },
      resolveTask: () => undefined,
      log: (e) => void events.push(e),
      metrics: options.metrics === false ? undefined : { endpoint, token: options.token },
    });
    servers.push(server);
    // A server on 0.0.0.0 is reached on loopback; the check is on the address it listens on.
    return { url: server.url.replace('0.0.0.0', '127.0.0.1'), events };
  }

  it('answers on loopback without a token, in the Prometheus text format', async () => {
    const { url } = await serve();
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const s = parseScrape(await res.text());
    expect(value(s, 'loopbox_model_slots_total')).toBe(4);
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('with a token: 401 without it or with a wrong one, 200 with it', async () => {
    const { url } = await serve({ token: TOKEN });
    const none = await fetch(`${url}/metrics`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toContain('Bearer');
    expect((await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}x` } })).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${SECRET}` } })).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { Authorization: `Basic ${TOKEN}` } })).status).toBe(401);
    const ok = await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('loopbox_iterations_total');
  });

  it('beyond loopback without a token: 403, and a warning at start', async () => {
    const { url, events } = await serve({ host: '0.0.0.0' });
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: string }).error).toContain('serve.metrics.tokenEnv');
    expect(events.map((e) => e.event)).toContain('metrics-refused');
  });

  it('beyond loopback with a token: served to the token holder', async () => {
    const { url } = await serve({ host: '0.0.0.0', token: TOKEN });
    expect((await fetch(`${url}/metrics`)).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
  });

  it('metrics off: 404', async () => {
    const { url } = await serve({ metrics: false });
    expect((await fetch(`${url}/metrics`)).status).toBe(404);
  });

  it('verifyBearer compares the whole token', () => {
    expect(verifyBearer(TOKEN, `Bearer ${TOKEN}`)).toBe(true);
    expect(verifyBearer(TOKEN, `Bearer ${TOKEN.slice(0, -1)}`)).toBe(false);
    expect(verifyBearer(TOKEN, `bearer${TOKEN}`)).toBe(false);
    expect(verifyBearer(TOKEN, undefined)).toBe(false);
    expect(verifyBearer(TOKEN, 'Bearer ')).toBe(false);
  });

  it('metricsTokenFromEnv: none named is no token; unset, short, or the webhook secret is a clear error', () => {
    const config = (tokenEnv?: string) => serveSchema.parse(tokenEnv ? { metrics: { tokenEnv } } : {});
    expect(metricsTokenFromEnv(config(), {})).toBeUndefined();
    expect(metricsTokenFromEnv(config('LBX_TOKEN'), { LBX_TOKEN: TOKEN })).toBe(TOKEN);
    expect(() => metricsTokenFromEnv(config('LBX_TOKEN'), {})).toThrow(/LBX_TOKEN.*not set/);
    expect(() => metricsTokenFromEnv(config('LBX_TOKEN'), { LBX_TOKEN: 'short' })).toThrow(/5 bytes long/);
    expect(() => metricsTokenFromEnv(config('LBX_TOKEN'), { LBX_TOKEN: SECRET, LOOPBOX_WEBHOOK_SECRET: SECRET })).toThrow(ConfigError);
    expect(() => serveSchema.parse({ metrics: { tokenEnv: 'not a name' } })).toThrow();
  });
});
