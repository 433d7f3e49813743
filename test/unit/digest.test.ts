// `loopbox digest` over run records written here in a temp state dir (run.json, state.json,
// iterations.jsonl, delivery.json, a real chained audit log): a bad night reads as one (errors
// first, what needs a human named), old runs stay out, a tampered audit log shows as broken.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { appendAudit, auditFile, sealAudit } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { runDir } from '../../src/common/paths.js';
import type { DeliveryRecord } from '../../src/deliver/deliver.js';
import { gatherDigest, renderDigestText } from '../../src/digest/digest.js';
import { renderDigestHtml } from '../../src/digest/html.js';
import type { IterationRecord, LoopState } from '../../src/loop/state.js';

let state: string;
let env: NodeJS.ProcessEnv;
beforeEach(async () => {
  state = await mkdtemp(path.join(tmpdir(), 'lbx-digest-'));
  env = { LOOPBOX_STATE_DIR: state };
});
afterEach(async () => {
  await rm(state, { recursive: true, force: true });
});

const hoursAgo = (h: number): string => new Date(Date.now() - h * 3_600_000).toISOString();

function iteration(i: number, over: Partial<IterationRecord> = {}): IterationRecord {
  return {
    iteration: i, startedAt: hoursAgo(3), endedAt: hoursAgo(3), agent: { exitCode: 0, timedOut: false, durationMs: 1000 }, tree: `tree${i}`, filesChanged: ['a.js'], protectedViolations: [], skipped: [],
    untrusted: null, verify: { passed: false, exitCode: 1, timedOut: false, durationMs: 500, outputTail: '' }, commit: `${i}`.repeat(40).slice(0, 40), verified: false, tokens: 100,
    audit: { blockedPackets: 2, dnsBlocked: 3, allowedPackets: 0, allowedBytes: 0, dnsAnswered: 0, records: 5 } as IterationRecord['audit'], modelDown: false, ...over,
  };
}

async function writeRun(runId: string, opts: { task: string; endState?: LoopState['endState']; reason?: string; startedH: number; endedH?: number; kind?: string; iterations?: IterationRecord[]; delivery?: DeliveryRecord; audit?: AuditRecord[] }): Promise<void> {
  const dir = runDir(runId, env);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'run.json'), JSON.stringify({ runId, kind: opts.kind ?? 'loop', task: opts.task, pid: 1, pidStart: null, hostname: hostname(), startedAt: hoursAgo(opts.startedH), ...(opts.endedH !== undefined ? { endedAt: hoursAgo(opts.endedH) } : {}), trigger: 'schedule:0 2 * * *' }));
  if (opts.kind && opts.kind !== 'loop') return;
  const its = opts.iterations ?? [iteration(1)];
  const s: LoopState = { runId, task: opts.task, taskFile: `tasks/${opts.task}.md`, repo: '/nonexistent', branch: `loopbox/${opts.task}`, worktree: '/nonexistent', baseTree: 'base', trees: its.map((i) => i.tree), iteration: its.length, tokens: its.length * 100, elapsedMs: 600_000, trigger: 'schedule:0 2 * * *', endState: opts.endState, endReason: opts.reason };
  await writeFile(path.join(dir, 'state.json'), JSON.stringify(s));
  await writeFile(path.join(dir, 'iterations.jsonl'), its.map((i) => JSON.stringify(i)).join('\n') + '\n');
  if (opts.delivery) await writeFile(path.join(dir, 'delivery.json'), JSON.stringify(opts.delivery));
  if (opts.audit) {
    await appendAudit(runId, opts.audit, env);
    await sealAudit(runId, env);
  }
}

function dns(runId: string, name: string, n: number): AuditRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    time: new Date(Date.now() - 3_600_000 + i).toISOString(), runId, task: 't', iteration: 1, role: 'agent', kind: 'dns', protocol: 'dns', family: 'ipv4', direction: 'out',
    src: '10.0.0.3', srcPort: 5000 + i, dst: null, dstPort: null, uid: 1000, query: name, queryType: 'A', icmpType: null, verdict: 'nxdomain', rule: 'dns', count: 1,
  }));
}

describe('digest', () => {
  it('errors first, then what needs a human, then done; every field the morning needs; old and non-loop runs left out', async () => {
    await writeRun('r-done', { task: 'deps', endState: 'done', reason: 'verified', startedH: 5, endedH: 4, iterations: [iteration(1), iteration(2, { verified: true, evidence: '12 of 12 tests pass', commit: 'f'.repeat(40) })],
      delivery: { at: hoursAgo(4), push: { status: 'pushed', remote: 'origin', branch: 'loopbox/deps', commit: 'f'.repeat(40) }, pullRequest: { status: 'opened', url: 'https://github.com/acme/app/pull/9', number: 9 }, notify: null },
      audit: [...dns('r-done', 'evil.invalid', 5), ...dns('r-done', 'pkg.invalid', 2)] });
    await writeRun('r-err', { task: 'flaky', endState: 'error', reason: 'the sentry did not start', startedH: 3, endedH: 3 });
    await writeRun('r-stall', { task: 'login', endState: 'stalled', reason: 'no change in 2 iterations', startedH: 2, endedH: 1,
      iterations: [iteration(1, { verified: true, review: { verdict: 'reject', reasons: ['tests were edited'], gaming: true, model: 'rev', attempts: 1, malformed: null, inputTokens: 1, outputTokens: 1, cost: null, bytesSent: 1, bytesReceived: 1, diffBytes: 1, diffCutBytes: 0 } })],
      delivery: { at: hoursAgo(1), push: { status: 'failed', remote: 'origin', error: 'git push to file:///x failed: the remote cannot be reached' }, pullRequest: null, notify: { event: 'loop-end', results: [{ target: 'webhook', ok: false, attempts: 3, error: 'no answer within 10000 ms' }] } } });
    await writeRun('r-old', { task: 'ancient', endState: 'error', reason: 'long ago', startedH: 30, endedH: 29 });
    await writeRun('r-sandbox', { task: 'x', kind: 'sandbox', startedH: 1, endedH: 1 });

    const d = await gatherDigest({ since: new Date(Date.now() - 12 * 3_600_000), version: '0.1.0', env });
    expect(d.runs.map((r) => r.runId)).toEqual(['r-err', 'r-stall', 'r-done']);
    expect(d.totals).toMatchObject({ runs: 3, done: 1, needsHuman: 2, byState: { error: 1, stalled: 1, done: 1 } });
    const [err, stall, done] = d.runs;
    expect(err!.attention).toEqual(['errored: the sentry did not start']);
    expect(stall!.attention).toEqual([
      'stalled: no change in 2 iterations',
      'reviewer rejected 1 time(s): reject (rev): tests were edited',
      'push failed: git push to file:///x failed: the remote cannot be reached',
      'notify webhook failed: no answer within 10000 ms',
    ]);
    expect(done).toMatchObject({ task: 'deps', endState: 'done', iterations: 2, wallMs: 600_000, tokens: 200, verifiedCommit: 'f'.repeat(40), evidence: '12 of 12 tests pass', blocked: 10, attention: [] });
    expect(done!.topBlocked).toEqual([{ name: 'evil.invalid', count: 5 }, { name: 'pkg.invalid', count: 2 }]);
    expect(done!.audit.status).toBe('ok');
    expect(done!.delivery?.pullRequest?.url).toBe('https://github.com/acme/app/pull/9');

    const text = renderDigestText(d);
    expect(text.indexOf('flaky')).toBeLessThan(text.indexOf('deps'));
    expect(text).toMatch(/!! flaky {2}ERROR/);
    expect(text).toMatch(/delivered: pushed loopbox\/deps \(origin\); PR https:\/\/github.com\/acme\/app\/pull\/9/);
    expect(text).toMatch(/evil\.invalid ×5/);
  });

  it('a tampered audit log shows as broken and needs a human; an unreadable run is reported, not skipped', async () => {
    await writeRun('r-tamper', { task: 'tamper', endState: 'done', reason: 'verified', startedH: 2, endedH: 1, audit: dns('r-tamper', 'a.invalid', 3) });
    const file = auditFile('r-tamper', env);
    await writeFile(file, (await readFile(file, 'utf8')).replace('a.invalid', 'b.invalid'));
    await writeRun('r-broken', { task: 'broken', endState: 'done', startedH: 2, endedH: 1 });
    await writeFile(path.join(runDir('r-broken', env), 'state.json'), '{ not json');
    const d = await gatherDigest({ since: new Date(Date.now() - 12 * 3_600_000), version: '0.1.0', env });
    const tamper = d.runs.find((r) => r.runId === 'r-tamper')!;
    expect(tamper.audit.status).toBe('broken');
    expect(tamper.attention.join('\n')).toMatch(/audit chain broken/);
    const broken = d.runs.find((r) => r.runId === 'r-broken')!;
    expect(broken.endState).toBe('unknown');
    expect(broken.reason).toMatch(/cannot be read/);
    expect(d.runs[0]!.runId).toBe('r-broken');
  });

  it('attack: terminal escapes and line breaks in what a reviewer, a remote or GitHub said do not reach the text digest raw', async () => {
    // The reviewer reads the agent's diff (prompt injection); a hostile GitHub answers the PR's html_url.
    const evil = '\u001b]0;pwned\u0007\u001b[2J\u009b31m\nFAKE  DONE  (run r-fake, manual)';
    const review = { verdict: 'reject' as const, reasons: [`looks fine ${evil}`], gaming: false, model: 'rev', attempts: 1, malformed: null, inputTokens: 1, outputTokens: 1, cost: null, bytesSent: 1, bytesReceived: 1, diffBytes: 1, diffCutBytes: 0 };
    await writeRun('r-esc', {
      task: 'esc', endState: 'stalled', reason: 'no change to the worktree in the last 3 iteration(s)', startedH: 2, endedH: 1,
      iterations: [iteration(1, { verified: true, review })],
      delivery: { at: hoursAgo(1), push: { status: 'pushed', remote: 'origin', branch: 'loopbox/esc-wip', commit: 'a'.repeat(40) }, pullRequest: { status: 'opened', url: `https://github.com/o/r/pull/1${evil}`, number: 1 }, notify: null },
    });
    const text = renderDigestText(await gatherDigest({ since: new Date(Date.now() - 12 * 3_600_000), version: '0.1.0', env }));
    expect(text).toContain('looks fine');
    // eslint-disable-next-line no-control-regex -- finding control characters is the point
    expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    expect(text.split('\n').filter((l) => l.startsWith('FAKE'))).toEqual([]);
  });

  it('the HTML escapes what agents wrote and loads nothing; an empty night says so', async () => {
    await writeRun('r-x', { task: 'x', endState: 'error', reason: '<img src=x onerror=alert(1)>', startedH: 1, endedH: 1 });
    const html = renderDigestHtml(await gatherDigest({ since: new Date(Date.now() - 3_600_000 * 2), version: '0.1.0', env }));
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(html).not.toContain('<img');
    expect(html).not.toMatch(/<script|src="http|href="http/);
    const empty = await gatherDigest({ since: new Date(), version: '0.1.0', env });
    expect(renderDigestText(empty)).toMatch(/No loop ran in this window/);
  });
});
