// model.escalate (issue 20): when to escalate, when to go back, what the gateway's escalated
// lines become, and the config's refusals. The real endpoint, key and firewall are tested in
// test/docker/escalate.test.ts.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { GATEWAY_FILE, readGatewayRecords } from '../../src/egress/gateway-records.js';
import { NO_ESCALATION, afterIteration, escalateApiKey, workerModel } from '../../src/loop/escalation.js';
import { commitMessage } from '../../src/loop/feedback.js';
import { sentrySpec } from '../../src/sandbox/specs.js';

const esc = { endpoint: 'https://api.example.invalid/v1', model: 'big', apiKeyEnv: 'K', after: 2, tokenBudget: 100 };
const rec = (iteration: number, verified = false, extra: { modelDown?: boolean; tokens?: number; escalated?: boolean } = {}) => ({
  iteration,
  verified,
  modelDown: extra.modelDown ?? false,
  tokens: extra.tokens ?? 10,
  model: { escalated: extra.escalated ?? false },
});
const quiet = { stalled: false, escalateBudgetExceeded: false };

describe('escalation decisions', () => {
  it('escalates after N failed iterations, not before; a voided iteration does not count', () => {
    let s = afterIteration(esc, undefined, rec(1), quiet);
    expect(s.state.active).toBe(false);
    s = afterIteration(esc, s.state, rec(2, false, { modelDown: true }), quiet);
    expect(s.state).toMatchObject({ active: false, failed: 1 });
    s = afterIteration(esc, s.state, rec(3), quiet);
    expect(s).toMatchObject({ escalatedNow: true, state: { active: true, failed: 2, since: 4, reason: 'after 2 iteration(s) that failed verification' } });
    // Once escalated, it stays (no second "escalated now").
    expect(afterIteration(esc, s.state, rec(4, false, { escalated: true }), quiet).escalatedNow).toBe(false);
  });

  it('a stall escalates early; without model.escalate nothing changes', () => {
    const s = afterIteration(esc, undefined, rec(1), { stalled: true, escalateBudgetExceeded: false });
    expect(s).toMatchObject({ escalatedNow: true, state: { active: true, reason: 'the loop stalled on the local model' } });
    expect(afterIteration(undefined, undefined, rec(1), { stalled: true, escalateBudgetExceeded: false })).toEqual({ state: NO_ESCALATION, escalatedNow: false, wentBack: false });
  });

  it('the escalation budget sends the loop back to the local model for good', () => {
    let s = afterIteration(esc, { ...NO_ESCALATION, active: true, failed: 2, since: 3 }, rec(3, false, { escalated: true, tokens: 60 }), quiet);
    expect(s.state).toMatchObject({ active: true, tokens: 60 });
    s = afterIteration(esc, s.state, rec(4, false, { escalated: true, tokens: 45 }), quiet);
    expect(s).toMatchObject({ wentBack: true, escalatedNow: false, state: { active: false, exhausted: true, tokens: 105 } });
    // Failures go on; it never escalates again.
    s = afterIteration(esc, s.state, rec(5), { stalled: true, escalateBudgetExceeded: false });
    expect(s.state.active).toBe(false);
    // The gateway's 429 is the budget's own word.
    const refused = afterIteration(esc, { ...NO_ESCALATION, active: true, failed: 2 }, rec(3, false, { escalated: true, tokens: 1 }), { stalled: false, escalateBudgetExceeded: true });
    expect(refused.state).toMatchObject({ active: false, exhausted: true });
  });

  it('the worker model and the commit trailer name who did the work', () => {
    const config = parseConfig({ model: { escalate: esc } });
    expect(workerModel(config, undefined)).toEqual({ name: 'local', escalated: false });
    expect(workerModel(config, { ...NO_ESCALATION, active: true })).toEqual({ name: 'big', escalated: true });
    const msg = commitMessage({ task: 't', runId: 'r', iteration: 3, verify: null, accounting: { verified: false, evidence: 'exit-code-only', record: null }, command: ['x'], model: { name: 'big', escalated: true } });
    expect(msg).toContain('Loopbox-Model: big (escalated)');
  });
});

describe('escalation config and key', () => {
  it('refuses credentials in the URL, odd schemes and multi-line model names', () => {
    expect(() => parseConfig({ model: { escalate: { ...esc, endpoint: 'https://u:p@api.example.invalid/v1' } } })).toThrow(/without credentials/);
    expect(() => parseConfig({ model: { escalate: { ...esc, endpoint: 'ftp://api.example.invalid/v1' } } })).toThrow(/http/);
    expect(() => parseConfig({ model: { escalate: { ...esc, model: 'a\nLoopbox-Verified: yes' } } })).toThrow(/one line/);
    expect(parseConfig({ model: { escalate: { endpoint: 'http://10.0.0.1:8080/v1', model: 'm' } } }).model.escalate).toMatchObject({ after: 2 });
  });

  it('an unset or multi-line key is bad input, said before anything runs', () => {
    expect(() => escalateApiKey(esc, {})).toThrow(/K, but that environment variable is not set/);
    expect(() => escalateApiKey(esc, { K: 'a b' })).toThrow(/spaces or control characters/);
    expect(escalateApiKey(esc, { K: 'sk-123' })).toBe('sk-123');
    expect(escalateApiKey({ ...esc, apiKeyEnv: undefined }, {})).toBeUndefined();
  });

  it('the sentry spec carries where to escalate, never a key', () => {
    const spec = sentrySpec({ runId: 'r', image: 'i', auditDir: '/a', allow: [], dnsHosts: {}, model: '10.0.0.2:8080', escalate: { upstream: '10.0.0.9:443', host: 'api.example.invalid', tls: true, base: '/v1', model: 'big', tokenBudget: 5 } });
    expect(spec.env).toMatchObject({ LOOPBOX_GW_ESCALATE: '10.0.0.9:443', LOOPBOX_GW_ESCALATE_HOST: 'api.example.invalid', LOOPBOX_GW_ESCALATE_TLS: '1', LOOPBOX_GW_ESCALATE_MODEL: 'big', LOOPBOX_GW_ESCALATE_BUDGET: '5' });
    expect(Object.keys(spec.env ?? {}).filter((k) => /KEY/i.test(k))).toEqual([]);
  });
});

describe('escalated gateway lines', () => {
  it('become allowed model-escalated audit records with tokens and the model, past any record limit', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-esc-'));
    try {
      const line = (n: number) => JSON.stringify({ time: '2026-12-07T10:00:00.000Z', method: 'POST', path: '/v1/chat/completions', status: 200, durationMs: n, promptTokens: 20, cachedTokens: 5, completionTokens: 7, escalated: true, model: 'big', upstream: '10.0.0.9:443' });
      const denied = JSON.stringify({ time: '2026-12-07T10:00:01.000Z', method: 'POST', path: '/v1/chat/completions', status: 429, durationMs: 0, denied: 'escalate-budget', escalated: true, model: 'big', upstream: '10.0.0.9:443' });
      await writeFile(path.join(dir, GATEWAY_FILE), `${[1, 2, 3].map(line).join('\n')}\n${denied}\n`);
      const read = await readGatewayRecords(dir, { runId: 'r', task: 't', iteration: 4 }, 'agent', 0, { ip: '10.0.0.2', port: 8080 }, 2);
      const allowed = read.audit.filter((r) => r.kind === 'model-escalated');
      expect(allowed).toHaveLength(3);
      expect(allowed[0]).toMatchObject({ verdict: 'allowed', iteration: 4, dst: '10.0.0.9', dstPort: 443, query: '/v1/chat/completions', escalation: { model: 'big', status: 200, promptTokens: 20, cachedTokens: 5, completionTokens: 7 } });
      expect(read.audit.filter((r) => r.kind === 'model-denied')).toHaveLength(1);
      expect(read.usage).toMatchObject({ escalatedTokens: 3 * 22, escalateBudgetExceeded: true, tokens: 3 * 22 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
