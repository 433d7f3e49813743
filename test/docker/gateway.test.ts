// The model gateway in the sentry (issue 8, item 1), against the real model server: a hostile
// agent reaches only the inference API, every refusal is an audit record, the gateway's token
// counts are exactly what the responses said (also with two sandboxes at once), body size and
// max_tokens are capped, and a loop's token budget is enforced by the gateway with 429.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { runDir } from '../../src/common/paths.js';
import type { ModelRequestRecord } from '../../src/egress/gateway-records.js';
import { findModelServer } from '../../src/model/network.js';
import { cli, docker, makeLoopRepo, parseJsonLines, remaining, repoRoot, testRunId, useTestRun } from './helpers.js';

interface Call {
  name: string;
  status: number;
  tokens: { prompt: number; cached: number; completion: number } | null;
  body?: string;
}

const fixtures = path.join(repoRoot, 'test', 'fixtures');

async function modelRequests(runId: string): Promise<ModelRequestRecord[]> {
  const text = await readFile(path.join(runDir(runId), 'model.jsonl'), 'utf8').catch(() => '');
  return parseJsonLines<ModelRequestRecord>(text);
}

async function auditOf(runId: string): Promise<AuditRecord[]> {
  const res = await cli(['audit', '--run', runId, '--json']);
  expect(res.exitCode, res.all).toBe(0);
  return parseJsonLines<AuditRecord>(res.stdout);
}

async function configFile(dir: string, config: Record<string, unknown>): Promise<string> {
  const file = path.join(dir, `gw-${testRunId('cfg')}.yaml`);
  await writeFile(file, stringify(config));
  return file;
}

function sandboxClient(runId: string, config: string, env: Record<string, string>): ReturnType<typeof cli> {
  const args = ['--config', config, 'sandbox', 'run', '--run-id', runId, '--task', 'gw', '--iteration', '1', '--mount', `${fixtures}:/fixtures:ro`];
  for (const [k, v] of Object.entries(env)) args.push('-e', `${k}=${v}`);
  return cli([...args, '--', 'node', '/fixtures/model-client.mjs'], { timeoutMs: 240_000 });
}

describe('model gateway (real Docker, real llama-server)', () => {
  const { track } = useTestRun('gw');
  const tmp = tmpdir();

  it('a hostile agent reaches only the inference API; each refusal is a model-denied record; tokens are what the responses said', async () => {
    const model = await findModelServer(docker);
    expect(model, 'the global setup starts a model server').toBeDefined();
    const runId = testRunId('gw-hostile');
    const config = await configFile(tmp, { model: { maxTokens: 7, maxRequestBody: '64k' } });
    try {
      const res = await sandboxClient(runId, config, { PROBE_ADMIN: '1', CHAT_CALLS: '2', ASK_MAX_TOKENS: '100000', BIG_BODY_BYTES: String(100 * 1024) });
      expect(res.exitCode, res.all).toBe(0);
      const calls = new Map(parseJsonLines<Call>(res.stdout).map((c) => [c.name, c]));
      // Today's main forwards all of these (200 for /slots, /metrics, /props).
      for (const name of ['GET /slots', 'GET /metrics', 'GET /props', 'POST /slots/0?action=save', 'DELETE /v1/models']) {
        expect(calls.get(name), name).toMatchObject({ status: 403 });
        expect(calls.get(name)?.body).toContain('loopbox_gateway');
      }
      expect(calls.get('GET /v1/models')?.status).toBe(200);
      expect(calls.get('chat-0')?.status).toBe(200);
      expect(calls.get('chat-1-stream')?.status).toBe(200);
      // max_tokens 100000 was lowered to model.maxTokens (7), streamed or not.
      for (const name of ['chat-0', 'chat-1-stream']) {
        expect(calls.get(name)?.tokens?.completion, name).toBeGreaterThan(0);
        expect(calls.get(name)?.tokens?.completion, name).toBeLessThanOrEqual(7);
      }
      expect(calls.get('big-body')?.status).toBe(413);

      const audit = await auditOf(runId);
      const denied = audit.filter((r) => r.kind === 'model-denied');
      for (const [method, p] of [['GET', '/slots'], ['GET', '/metrics'], ['GET', '/props'], ['POST', '/slots/0?action=save'], ['DELETE', '/v1/models']]) {
        expect(denied.find((r) => r.queryType === method && r.query === p), `${method} ${p}`).toMatchObject({
          runId, task: 'gw', iteration: 1, verdict: 'denied', rule: 'gateway 403 path', dst: model!.ip, dstPort: model!.port,
        });
      }
      expect(denied.find((r) => r.rule === 'gateway 413 body-too-large')).toBeDefined();
      // The agent's own connections to the model never show as blocked packets: they all went to the gateway.
      expect(audit.filter((r) => r.kind === 'packet')).toEqual([]);

      // Per request: the gateway's counts are exactly the ones in the responses the agent got.
      const requests = await modelRequests(runId);
      expect(requests.every((r) => r.runId === runId && r.task === 'gw' && r.iteration === 1)).toBe(true);
      const chats = requests.filter((r) => r.path === '/v1/chat/completions' && r.status === 200);
      expect(chats).toHaveLength(2);
      for (const [i, name] of ['chat-0', 'chat-1-stream'].entries()) {
        const seen = calls.get(name)!.tokens!;
        expect(chats[i], name).toMatchObject({ promptTokens: seen.prompt, cachedTokens: seen.cached, completionTokens: seen.completion });
        expect(chats[i]!.durationMs).toBeGreaterThan(0);
      }
      expect(res.stderr).toMatch(/model request\(s\), \d+ tokens/);
      expect(await remaining(runId)).toEqual([]);
    } finally {
      await rm(config, { force: true });
    }
  });

  it('two sandboxes at once on one model server: each run counts exactly its own tokens', async () => {
    const config = await configFile(tmp, {});
    const runs = [testRunId('gw-par-a'), testRunId('gw-par-b')];
    try {
      const results = await Promise.all(runs.map((runId, i) => sandboxClient(runId, config, { CHAT_CALLS: String(3 + i), ASK_MAX_TOKENS: '24' })));
      for (const [i, runId] of runs.entries()) {
        const res = results[i]!;
        expect(res.exitCode, res.all).toBe(0);
        const calls = parseJsonLines<Call>(res.stdout).filter((c) => c.name.startsWith('chat-'));
        expect(calls).toHaveLength(3 + i);
        expect(calls.every((c) => c.status === 200 && c.tokens), res.stdout).toBe(true);
        const seen = calls.reduce((s, c) => ({ p: s.p + c.tokens!.prompt, c: s.c + c.tokens!.cached, o: s.o + c.tokens!.completion }), { p: 0, c: 0, o: 0 });
        const recorded = (await modelRequests(runId)).reduce((s, r) => ({ p: s.p + (r.promptTokens ?? 0), c: s.c + (r.cachedTokens ?? 0), o: s.o + (r.completionTokens ?? 0) }), { p: 0, c: 0, o: 0 });
        expect(recorded, runId).toEqual(seen);
        expect(await remaining(runId)).toEqual([]);
      }
    } finally {
      await rm(config, { force: true });
    }
  });

  it('loop.tokenBudget is enforced by the gateway: the request past it gets 429 and the loop ends timed-out-budget', async () => {
    const spender = `// calls the model until it refuses, and records what it saw
import { appendFileSync } from 'node:fs';
const url = process.env.LOOPBOX_MODEL_URL + '/chat/completions';
for (let i = 0; i < 50; i++) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'spend ' + i }], max_tokens: 16 }) });
  await res.text();
  console.log('call ' + i + ' HTTP ' + res.status);
  if (res.status !== 200) break;
}
`;
    const lr = track(await makeLoopRepo({
      agent: { type: 'command', command: ['node', 'tools/spend.mjs'], timeout: '120s' },
      verify: { command: ['node', 'test/calc.test.js'] },
      protectedPaths: ['test/**', 'tools/**'],
      loop: { maxIterations: 5, tokenBudget: 120 },
    }));
    await writeFile(path.join(lr.repo, 'tools', 'spend.mjs'), spender);
    await execa('git', ['add', '-A'], { cwd: lr.repo });
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'spender'], { cwd: lr.repo });
    const res = await cli(['--config', lr.config, 'run', '--repo', lr.repo, '--json', path.join(lr.repo, 'tasks', 'fix-add.md')], { timeoutMs: 300_000 });
    const end = parseJsonLines<{ type: string; summary?: { endState: string; runId: string; tokens: number; iterations: number } }>(res.stdout).find((e) => e.type === 'loop-end')?.summary;
    expect(end?.endState, res.all).toBe('timed-out-budget');
    expect(res.exitCode).toBe(5);
    expect(end!.iterations).toBe(1);
    const log = await readFile(path.join(runDir(end!.runId), 'sandboxes', 'i1.agent.log'), 'utf8');
    expect(log).toMatch(/HTTP 429/);
    const requests = await modelRequests(end!.runId);
    const refused = requests.findIndex((r) => r.status === 429);
    expect(refused, 'a request was refused').toBeGreaterThan(0);
    expect(requests[refused]!.denied).toBe('token-budget');
    // Nothing was forwarded once the budget was used, and the loop's tokens are the gateway's.
    expect(requests.slice(refused).every((r) => r.status === 429)).toBe(true);
    const metered = requests.reduce((n, r) => n + (r.promptTokens ?? 0) - (r.cachedTokens ?? 0) + (r.completionTokens ?? 0), 0);
    expect(end!.tokens).toBe(metered);
    expect(metered).toBeGreaterThanOrEqual(120);
    const audit = await auditOf(end!.runId);
    expect(audit.some((r) => r.kind === 'model-denied' && r.rule === 'gateway 429 token-budget' && r.iteration === 1)).toBe(true);
  });
});
