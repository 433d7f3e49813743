// model.escalate (issue 20): after N iterations that failed verification, the agent's model
// requests go through the sentry's gateway to a second endpoint whose key only the gateway
// holds. The endpoint here is a second real llama-server started with `--api-key <random>` on
// a network of the test's own (and the egress bridge, which stands for the internet). The
// agent is hostile: besides its model request it tries the endpoint directly and hunts for the
// key in /proc, its env and its filesystem.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import { resourceLabels } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { ensureFixtureModel } from '../../src/model/fixture.js';
import { EGRESS_NETWORK, ensureNetwork } from '../../src/model/network.js';
import { llamaServerArgs, parsePrometheus, waitHealthy } from '../../src/model/server.js';
import type { RunRecord } from '../../src/runs/registry.js';
import { Sentry } from '../../src/sandbox/sandbox.js';
import { beginTestRun, cli, docker, endTestRun, makeLoopRepo, parseJsonLines, testRunId, type LoopRepo } from './helpers.js';

// The key's shape, so the agent can hunt for it without carrying it.
const KEY_PREFIX = 'lbxk';
const KEY_ENV = 'LBX_TEST_ESCALATE_KEY';

/** The hostile agent: one model request (no key), one direct attempt, a hunt for the key. */
function agentScript(escalationIp: string): string {
  return `import fs from 'node:fs';
import path from 'node:path';
const out = (s) => console.log(s);
const it = process.env.LOOPBOX_ITERATION;
const res = await fetch(process.env.LOOPBOX_MODEL_URL + '/chat/completions', {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  // A prompt no earlier request sent (the nonce first): llama-server's prompt cache would
  // otherwise serve an identical one, and the escalation budget counts uncached prompt tokens.
  body: JSON.stringify({ model: 'local', messages: [{ role: 'user', content: Math.random().toString(36).slice(2) + ' hi' }], max_tokens: 8 }),
}).catch((e) => ({ status: 'error ' + e.cause?.code }));
out('ITER ' + it + ' MODEL ' + res.status);
// A change each iteration, so that each one is committed (with its trailers).
fs.appendFileSync('agent-notes.txt', 'iteration ' + it + '\\n');
try {
  const r = await fetch('http://${escalationIp}:8080/v1/models', { signal: AbortSignal.timeout(4000) });
  out('ITER ' + it + ' DIRECT reached ' + r.status);
} catch (e) {
  out('ITER ' + it + ' DIRECT blocked ' + (e.cause?.code ?? e.name));
}
const pattern = new RegExp('${KEY_PREFIX}' + '-[0-9a-f]{48}');
const found = [];
const look = (where, text) => { if (pattern.test(text)) found.push(where); };
look('env', JSON.stringify(process.env));
for (const pid of fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p))) {
  for (const f of ['environ', 'cmdline']) {
    try { look('/proc/' + pid + '/' + f, fs.readFileSync('/proc/' + pid + '/' + f, 'latin1')); } catch {}
  }
}
let files = 0;
const walk = (dir) => {
  let entries = [];
  try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch { return; }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) { if (!['/proc', '/sys', '/dev', '/usr', '/lib', '/lib64', '/bin', '/sbin'].includes(p)) walk(p); continue; }
    if (!e.isFile()) continue;
    try { if (fs.statSync(p).size < 4 << 20) { files++; look(p, fs.readFileSync(p, 'latin1')); } } catch {}
  }
};
walk('/');
out('ITER ' + it + ' HUNT files ' + files + ' found ' + found.length + (found.length ? ' in ' + found.join(',') : ''));
`;
}

async function filesUnder(dir: string, skip: (p: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (skip(p)) continue;
    if (e.isDirectory()) out.push(...(await filesUnder(p, skip)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

describe('model.escalate (real Docker, a second llama-server with --api-key)', () => {
  const runId = testRunId('esc');
  const key = `${KEY_PREFIX}-${randomBytes(24).toString('hex')}`;
  let record: RunRecord;
  let ip: string;
  let serverId: string;
  const loops: LoopRepo[] = [];

  const metrics = async (): Promise<Record<string, number>> => {
    const r = await docker.exec(serverId, ['curl', '-sf', '-H', `Authorization: Bearer ${key}`, 'http://127.0.0.1:8080/metrics']);
    expect(r.exitCode, r.stderr).toBe(0);
    return parsePrometheus(r.stdout);
  };

  beforeAll(async () => {
    record = await beginTestRun(runId);
    const labels = resourceLabels({ runId, role: 'test' });
    const network = `lbx-${runId}-esc`;
    await docker.createNetwork({ name: network, internal: false, labels, subnet: '10.214.20.0/24' });
    const gguf = await ensureFixtureModel(docker);
    serverId = await docker.createContainer({
      name: `lbx-${runId}-frontier`,
      image: imageRef('llama-cpu'),
      cmd: llamaServerArgs({ ctxSize: 4096, parallel: 1, gpuLayers: 0, extraArgs: ['--api-key', key] }, '/models/m.gguf', false),
      labels,
      networkMode: network,
      binds: [{ host: gguf, container: '/models/m.gguf', readOnly: true }],
      capDrop: ['ALL'],
    });
    // Bridges are isolated from each other: the egress bridge stands for the route out.
    await ensureNetwork(docker, EGRESS_NETWORK, false);
    await docker.connectNetwork(EGRESS_NETWORK, serverId);
    await docker.start(serverId);
    await waitHealthy(docker, serverId, imageRef('llama-cpu'), 60_000);
    ip = (await docker.inspect(serverId)).NetworkSettings.Networks[EGRESS_NETWORK]!.IPAddress;
  });

  afterAll(async () => {
    for (const l of loops) await execa('rm', ['-rf', l.repo, l.config]);
    await endTestRun(record);
    const egress = await docker.findNetwork(EGRESS_NETWORK);
    if (egress && Object.keys(egress.Containers ?? {}).length === 0) await docker.removeNetwork(EGRESS_NETWORK);
  });

  it('the key is needed: without it the second server answers 401', async () => {
    const r = await docker.exec(serverId, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:8080/v1/models']);
    expect(r.stdout).toBe('401');
  });

  it('an escalated sentry: the key is not in its env, and its key file is gone once it is ready', async () => {
    const auditDir = await mkdtemp(path.join(tmpdir(), 'lbx-esc-audit-'));
    const sentry = await Sentry.start(docker, { runId, auditDir, escalate: { endpoint: `http://${ip}:8080/v1`, model: 'frontier-model', apiKey: key } });
    try {
      expect(sentry.escalated).toBe(true);
      const inspect = await docker.inspect(sentry.id);
      expect(JSON.stringify(inspect.Config.Env)).not.toContain(key);
      expect(inspect.Config.Env).toContain(`LOOPBOX_GW_ESCALATE=${ip}:8080`);
      const file = await docker.exec(sentry.id, ['sh', '-c', 'ls -la /run/loopbox-escalate.key; cat /run/loopbox-escalate.key']);
      expect(file.exitCode).not.toBe(0);
      expect(file.stdout + file.stderr).not.toContain(key);
      // The gateway has it (it says so without printing it).
      const out = await docker.exec(sentry.id, ['cat', '/run/loopbox/gateway.out']);
      expect(out.stdout).toContain(`escalated to ${ip}:8080 (frontier-model, key)`);
      expect(out.stdout).not.toContain(key);
    } finally {
      await sentry.stop();
      await rm(auditDir, { recursive: true, force: true });
    }
  });

  async function hostileLoop(escalate: Record<string, unknown>): Promise<LoopRepo> {
    const loop = await makeLoopRepo({
      model: { escalate: { endpoint: `http://${ip}:8080/v1`, model: 'frontier-model', apiKeyEnv: KEY_ENV, ...escalate } },
      agent: { type: 'command', command: ['node', 'tools/hostile-agent.mjs'], timeout: '90s' },
      verify: { command: ['node', 'test/calc.test.js'] },
      protectedPaths: ['test/**', 'tools/**'],
      loop: { maxIterations: 3, noProgress: 5 },
    });
    loops.push(loop);
    await writeFile(path.join(loop.repo, 'tools', 'hostile-agent.mjs'), agentScript(ip));
    await execa('git', ['add', '-A'], { cwd: loop.repo });
    await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'hostile agent'], { cwd: loop.repo });
    return loop;
  }

  it('escalates after N failed iterations, only through the gateway, and the key is in no file and not in the agent', async () => {
    const loop = await hostileLoop({ after: 2 });
    const before = await metrics();

    const res = await cli(['--config', loop.config, 'run', '--repo', loop.repo, '--json', path.join(loop.repo, 'tasks', 'fix-add.md')], { env: { [KEY_ENV]: key }, timeoutMs: 600_000 });
    const end = parseJsonLines<{ type: string; message?: string; summary?: { endState: string; runId: string; runDir: string; branch: string } }>(res.stdout);
    const summary = end.find((e) => e.type === 'loop-end')?.summary;
    expect(summary?.endState, res.all).toBe('capped');
    expect(end.some((e) => e.type === 'notice' && /escalating to frontier-model from iteration 3: after 2 iteration\(s\) that failed verification/.test(e.message ?? ''))).toBe(true);
    const dir = summary!.runDir;

    // Which model did each iteration's work: local for 1 and 2, the escalation endpoint for 3.
    const its = parseJsonLines<IterationRecord>(await readFile(path.join(dir, 'iterations.jsonl'), 'utf8'));
    expect(its.map((i) => [i.iteration, i.verified, i.model?.name, i.model?.escalated])).toEqual([
      [1, false, 'local', false],
      [2, false, 'local', false],
      [3, false, 'frontier-model', true],
    ]);
    const logs = await Promise.all([1, 2, 3].map((n) => readFile(path.join(dir, 'sandboxes', `i${n}.agent.log`), 'utf8')));
    // The agent's request carried no key, and every one was answered 200 (3: by the second server).
    for (const [n, log] of logs.entries()) expect(log, log).toContain(`ITER ${n + 1} MODEL 200`);
    // The direct attempt at the escalation endpoint never got through.
    for (const [n, log] of logs.entries()) expect(log, log).toMatch(new RegExp(`ITER ${n + 1} DIRECT blocked`));
    // The hunt ran, read files, and found the key nowhere the agent can look.
    for (const [n, log] of logs.entries()) expect(log, log).toMatch(new RegExp(`ITER ${n + 1} HUNT files [1-9]\\d* found 0\\b`));

    // The second server did the work of iteration 3, and only that.
    const after = await metrics();
    expect((after['llamacpp:prompt_tokens_total'] ?? 0) - (before['llamacpp:prompt_tokens_total'] ?? 0)).toBeGreaterThan(0);
    // Exactly iteration 3's completion: iterations 1 and 2 never reached it.
    expect((after['llamacpp:tokens_predicted_total'] ?? 0) - (before['llamacpp:tokens_predicted_total'] ?? 0)).toBe(its[2]!.model!.completionTokens);
    expect(its[2]!.model!.completionTokens).toBeGreaterThan(0);
    expect(its[2]!.tokens).toBeGreaterThan(0);

    // Audit: the escalated request is an allowed record with its tokens and model; each direct
    // attempt a rejected packet to the endpoint, from the agent's uid.
    const audit = parseJsonLines<AuditRecord>((await cli(['audit', '--run', summary!.runId, '--json'])).stdout);
    const escalated = audit.filter((r) => r.kind === 'model-escalated');
    expect(escalated).toHaveLength(1);
    expect(escalated[0]).toMatchObject({ iteration: 3, verdict: 'allowed', dst: ip, dstPort: 8080, query: '/v1/chat/completions', escalation: { model: 'frontier-model', status: 200 } });
    expect(escalated[0]!.escalation!.completionTokens).toBeGreaterThan(0);
    const direct = audit.filter((r) => r.kind === 'packet' && r.dst === ip && r.dstPort === 8080);
    expect(direct.length, JSON.stringify(audit)).toBeGreaterThan(0);
    expect(direct.filter((r) => r.verdict !== 'rejected' || r.rule !== 'out-tcp' || r.uid !== 1000)).toEqual([]);
    // Each iteration's attempt, the escalated one's included (its sentry has the route and the
    // gateway's uid may use it: the agent's uid may not).
    expect([...new Set(direct.map((r) => r.iteration))]).toEqual([1, 2, 3]);

    // Commit trailers say which model did the work.
    const log = (await execa('git', ['log', '--format=%B%x00', `refs/heads/${summary!.branch}`], { cwd: loop.repo })).stdout.split('\0');
    expect(log[0]).toContain('Loopbox-Model: frontier-model (escalated)');
    expect(log[2]).toContain('Loopbox-Model: local');

    // The key is in no file of the run: the state dir (run dirs, worktrees, audit, sandboxes),
    // the repository with its .git, the config; nor in the report.
    const report = await cli(['report', summary!.runId]);
    expect(report.exitCode, report.all).toBe(0);
    const html = await readFile(path.join(dir, 'report.html'), 'utf8');
    expect(html).toMatch(/data-testid="model-escalated">Escalated \(model.escalate\): iteration\(s\) 3 went to <code>frontier-model<\/code>/);
    const stateDir = process.env.LOOPBOX_STATE_DIR!;
    const files = [
      ...(await filesUnder(stateDir, (p) => p === path.join(stateDir, 'models'))),
      ...(await filesUnder(loop.repo, () => false)),
      loop.config,
    ];
    expect(files.length).toBeGreaterThan(20);
    const holding: string[] = [];
    for (const f of files) {
      if ((await stat(f)).size > 64 << 20) continue;
      if ((await readFile(f)).includes(key)) holding.push(f);
    }
    expect(holding).toEqual([]);
  });

  it('past model.escalate.tokenBudget the loop goes back to the local model for good', async () => {
    const loop = await hostileLoop({ after: 1, tokenBudget: 5 });
    const res = await cli(['--config', loop.config, 'run', '--repo', loop.repo, '--json', path.join(loop.repo, 'tasks', 'fix-add.md')], { env: { [KEY_ENV]: key }, timeoutMs: 600_000 });
    const events = parseJsonLines<{ type: string; message?: string; summary?: { endState: string; runDir: string; escalation?: unknown } }>(res.stdout);
    const summary = events.find((e) => e.type === 'loop-end')?.summary;
    expect(summary?.endState, res.all).toBe('capped');
    const its = parseJsonLines<IterationRecord>(await readFile(path.join(summary!.runDir, 'iterations.jsonl'), 'utf8'));
    expect(its.map((i) => [i.iteration, i.model?.name, i.model?.escalated])).toEqual([
      [1, 'local', false],
      [2, 'frontier-model', true],
      [3, 'local', false],
    ]);
    // The one escalated request was admitted with max_tokens cut to what was left (5).
    expect(its[1]!.model!.completionTokens).toBeLessThanOrEqual(5);
    expect(its[1]!.model!.completionTokens).toBeGreaterThan(0);
    expect(events.some((e) => e.type === 'notice' && /escalation token budget of 5 used \(\d+\): back to the local model/.test(e.message ?? ''))).toBe(true);
    const state = JSON.parse(await readFile(path.join(summary!.runDir, 'state.json'), 'utf8')) as { escalation?: { exhausted: boolean; active: boolean } };
    expect(state.escalation).toMatchObject({ active: false, exhausted: true });
    expect(summary).toMatchObject({ escalation: { active: false, exhausted: true, since: 2 } });
  });

  it('a stall on the local model escalates instead of ending the loop; a stall while escalated ends it', async () => {
    const ask = "fetch(process.env.LOOPBOX_MODEL_URL + '/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }) }).then((r) => console.log('MODEL ' + r.status))";
    const loop = await makeLoopRepo({
      model: { escalate: { endpoint: `http://${ip}:8080/v1`, model: 'frontier-model', apiKeyEnv: KEY_ENV, after: 5 } },
      // Changes nothing: the tree never moves, so the no-progress brake fires after one iteration.
      agent: { type: 'command', command: ['node', '-e', ask], timeout: '60s' },
      verify: { command: ['node', 'test/calc.test.js'] },
      loop: { maxIterations: 5, noProgress: 1 },
    });
    loops.push(loop);
    const res = await cli(['--config', loop.config, 'run', '--repo', loop.repo, '--json', path.join(loop.repo, 'tasks', 'fix-add.md')], { env: { [KEY_ENV]: key }, timeoutMs: 600_000 });
    const events = parseJsonLines<{ type: string; message?: string; summary?: { endState: string; runDir: string } }>(res.stdout);
    const summary = events.find((e) => e.type === 'loop-end')?.summary;
    expect(summary?.endState, res.all).toBe('stalled');
    expect(events.some((e) => e.type === 'notice' && /escalating to frontier-model from iteration 2: the loop stalled on the local model/.test(e.message ?? ''))).toBe(true);
    const its = parseJsonLines<IterationRecord>(await readFile(path.join(summary!.runDir, 'iterations.jsonl'), 'utf8'));
    expect(its.map((i) => [i.iteration, i.model?.name, i.model?.escalated, i.model?.requests])).toEqual([
      [1, 'local', false, 1],
      [2, 'frontier-model', true, 1],
    ]);
    expect(await readFile(path.join(summary!.runDir, 'sandboxes', 'i2.agent.log'), 'utf8')).toContain('MODEL 200');
  });
});
