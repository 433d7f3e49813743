// `loopbox serve`'s /metrics against a real loop (issue 17 item 4): a signed POST /trigger
// starts a task whose command agent makes real model calls through the sandbox's gateway and
// real blocked attempts (TCP to a decoy of the test's own, DNS look-ups of .invalid names);
// the scrape is read by a real Prometheus text parser and its values are checked against the
// run's own iteration records and audit log.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { runDir } from '../../src/common/paths.js';
import type { IterationRecord } from '../../src/loop/state.js';
import type { RunRecord } from '../../src/runs/registry.js';
import { signTrigger } from '../../src/triggers/serve.js';
import { histogram, parseScrape, type Scrape, value } from '../prom.js';
import { type Decoy, beginTestRun, cli, cliPath, endTestRun, makeLoopRepo, parseJsonLines, repoRoot, startDecoy, testRunId, waitFor } from './helpers.js';

const SECRET = 'metrics-test-secret-0123456789abcdef-xyz';
const TOKEN = 'metrics-test-token-0123456789abcdef-abcd';

describe('GET /metrics of loopbox serve with a real loop (real Docker, sentry, llama-server)', () => {
  const testRun = testRunId('metrics');
  let record: RunRecord;
  let decoy: Decoy;
  const cleanup: string[] = [];

  beforeAll(async () => {
    record = await beginTestRun(testRun);
    decoy = await startDecoy(testRun);
  });
  afterAll(async () => {
    const { rm } = await import('node:fs/promises');
    for (const p of cleanup) await rm(p, { recursive: true, force: true });
    if (record) await endTestRun(record);
  });

  it('counts the iterations, blocked attempts by rule and tokens the run had, and the loop while it runs', async () => {
    // Each iteration: 3 TCP connects to the decoy (refused by the sentry, rule out-tcp), one DNS
    // look-up of an .invalid name (refused by the DNS front), one real completion through the
    // gateway, then a change to the tree; verification keeps failing, so 2 iterations, capped.
    const probe = `node -e "const net=require('net'),dns=require('dns');let n=0;const done=()=>{if(++n===4)process.exit(0)};for(let i=0;i<3;i++){const c=net.connect({host:'${decoy.v4}',port:${decoy.port}});c.setTimeout(5000,()=>{c.destroy();done()});c.on('connect',()=>process.exit(3));c.on('error',done)}dns.lookup('m-'+process.env.LOOPBOX_ITERATION+'-${testRun}.invalid',()=>done())"`;
    const agent = `sleep 3; ${probe} && CHAT_CALLS=1 node model-client.mjs > /dev/null && echo "$LOOPBOX_ITERATION" > progress.txt`;
    const repo = await makeLoopRepo(
      {
        agent: { type: 'command', command: ['bash', '-c', agent], timeout: '120s' },
        verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
        loop: { maxIterations: 2, noProgress: 5 },
        sandbox: { memory: '512m', cpus: 0.5, pids: 128 },
        serve: { port: 0, metrics: { tokenEnv: 'LBX_TEST_METRICS_TOKEN' } },
      },
      ['metered'],
    );
    cleanup.push(repo.repo, repo.config);
    // The model client the gateway tests use, committed so the agent's workspace has it.
    await execa('cp', [path.join(repoRoot, 'test', 'fixtures', 'model-client.mjs'), repo.repo]);
    await execa('git', ['add', 'model-client.mjs'], { cwd: repo.repo });
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'model client'], { cwd: repo.repo });

    const server: ResultPromise<{ reject: false; all: true; env: Record<string, string> }> = execa('node', [cliPath, '--config', repo.config, 'serve', '--repo', repo.repo], {
      reject: false,
      all: true,
      env: { LOOPBOX_WEBHOOK_SECRET: SECRET, LBX_TEST_METRICS_TOKEN: TOKEN },
    });
    let stderr = '';
    server.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    try {
      const url = await waitFor('the server', () => Promise.resolve(/listening on (http:\/\/\S+)/.exec(stderr)?.[1]), 60_000);
      const scrape = async (): Promise<{ text: string; s: Scrape }> => {
        const res = await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } });
        expect(res.status).toBe(200);
        const text = await res.text();
        return { text, s: parseScrape(text) };
      };
      expect((await fetch(`${url}/metrics`)).status).toBe(401);
      const before = await scrape();
      expect(value(before.s, 'loopbox_loops', { state: 'running' })).toBe(0);
      expect(value(before.s, 'loopbox_model_up')).toBe(1);
      expect(value(before.s, 'loopbox_model_slots_total')).toBeGreaterThanOrEqual(1);

      const body = JSON.stringify({ task: 'metered' });
      const ts = String(Math.floor(Date.now() / 1000));
      const started = await fetch(`${url}/trigger`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-loopbox-timestamp': ts, 'x-loopbox-delivery': 'm-1', 'x-loopbox-signature-256': signTrigger(SECRET, ts, 'm-1', body) },
        body,
      });
      expect(started.status, stderr).toBe(202);
      const { runId } = (await started.json()) as { runId: string };

      // While it runs: one loop running, and the run id never appears in the exposition.
      const during = await waitFor('the loop to show as running', async () => {
        const now = await scrape();
        return value(now.s, 'loopbox_loops', { state: 'running' }) === 1 ? now : undefined;
      }, 60_000);
      expect(during.text).not.toContain(runId);

      const after = await waitFor('the loop to end', async () => {
        const now = await scrape();
        // loop-end is counted as the loop ends; the runner lets go of it a moment later.
        return value(now.s, 'loopbox_loops_ended_total', { task: 'metered' }) === 1 && value(now.s, 'loopbox_loops', { state: 'running' }) === 0 ? now : undefined;
      }, 300_000);
      const { s, text } = after;
      expect(text).not.toContain(runId);
      expect(text).not.toContain('.invalid');

      // What the run itself recorded.
      const iterations = parseJsonLines<IterationRecord>(await readFile(path.join(runDir(runId), 'iterations.jsonl'), 'utf8'));
      expect(iterations).toHaveLength(2);
      const audit = await cli(['audit', '--run', runId, '--json']);
      expect(audit.exitCode, audit.all).toBe(0);
      const records = parseJsonLines<AuditRecord>(audit.stdout);
      const toDecoy = records.filter((r) => r.rule === 'out-tcp' && r.dst === decoy.v4).reduce((n, r) => n + r.count, 0);
      expect(toDecoy, 'three refused connects per iteration').toBeGreaterThanOrEqual(6);

      expect(value(s, 'loopbox_loops_ended_total', { task: 'metered', end_state: 'capped' })).toBe(1);
      expect(value(s, 'loopbox_loops_started_total', { task: 'metered' })).toBe(1);
      expect(value(s, 'loopbox_iterations_total', { task: 'metered', result: 'failed' })).toBe(2);
      expect(value(s, 'loopbox_iterations_total', { task: 'metered' })).toBe(2);
      expect(value(s, 'loopbox_loops', { state: 'queued' })).toBe(0);

      const sumRule = (rule: string): number => iterations.reduce((n, i) => n + (i.audit.blockedByRule?.[rule] ?? 0), 0);
      expect(value(s, 'loopbox_blocked_attempts_total', { task: 'metered', rule: 'out-tcp' })).toBe(sumRule('out-tcp'));
      expect(value(s, 'loopbox_blocked_attempts_total', { task: 'metered', rule: 'out-tcp' })).toBe(records.filter((r) => r.rule === 'out-tcp').reduce((n, r) => n + r.count, 0));
      expect(value(s, 'loopbox_blocked_attempts_total', { task: 'metered', rule: 'dns' })).toBe(sumRule('dns'));
      expect(sumRule('dns'), 'one .invalid look-up per iteration').toBeGreaterThanOrEqual(2);
      expect(value(s, 'loopbox_audit_lost_records_total')).toBe(iterations.reduce((n, i) => n + i.audit.lostRecords, 0));

      const tokens = (k: 'promptTokens' | 'cachedTokens' | 'completionTokens'): number => iterations.reduce((n, i) => n + (i.model?.[k] ?? 0), 0);
      expect(tokens('promptTokens'), 'the agent made real completions').toBeGreaterThan(0);
      expect(value(s, 'loopbox_model_tokens_total', { task: 'metered', kind: 'input' })).toBe(tokens('promptTokens'));
      expect(value(s, 'loopbox_model_tokens_total', { task: 'metered', kind: 'output' })).toBe(tokens('completionTokens'));
      expect(value(s, 'loopbox_model_tokens_total', { task: 'metered', kind: 'cached' })).toBe(tokens('cachedTokens'));
      expect(value(s, 'loopbox_model_requests_total', { task: 'metered' })).toBe(iterations.reduce((n, i) => n + (i.model?.requests ?? 0), 0));

      const verify = histogram(text, 'loopbox_verify_duration_seconds', { task: 'metered', result: 'failed' });
      expect(verify?.count).toBe('2');
      const seconds = iterations.reduce((n, i) => n + (i.verify?.durationMs ?? 0), 0) / 1000;
      expect(Number(verify?.sum)).toBeCloseTo(seconds, 3);
    } finally {
      server.kill('SIGINT');
      await server;
    }
  }, 420_000);
});
