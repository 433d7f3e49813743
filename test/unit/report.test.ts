// The run report from a run directory and a real git repository: the numbers it shows, the
// grouping of blocked egress, the gateway's usage, and that everything the agent chose is
// escaped and nothing outside the file is referenced.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import type { IterationRecord, LoopState } from '../../src/loop/state.js';
import { type ReportData, gatherReport } from '../../src/report/data.js';
import { renderReport } from '../../src/report/html.js';
import { writeReports } from '../../src/report/report.js';

const HOSTILE = '"><script>document.title="pwned"</script><img src=x onerror=alert(1)>';
/** The same without '/', so that it can be a file name. */
const HOSTILE_FILE = '"><svg onload=alert(1)><img src=x onerror=alert(1)>';
let root: string;
let env: NodeJS.ProcessEnv;
let data: ReportData;
let html: string;

async function git(cwd: string, ...args: string[]): Promise<string> {
  return (await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'commit.gpgSign=false', ...args], { cwd })).stdout.trim();
}

function iteration(n: number, over: Partial<IterationRecord>): IterationRecord {
  return {
    iteration: n,
    startedAt: `2026-01-01T00:00:0${n * 2}.000Z`,
    endedAt: `2026-01-01T00:00:0${n * 2 + 1}.500Z`,
    agent: { exitCode: 0, timedOut: false, durationMs: 1000 },
    tree: 't',
    filesChanged: [],
    protectedViolations: [],
    skipped: [],
    untrusted: null,
    verify: { passed: false, exitCode: 1, timedOut: false, durationMs: 300, outputTail: '' },
    commit: null,
    verified: false,
    tokens: 10,
    audit: { allowedPackets: 4, allowedBytes: 400, blockedPackets: 3, dnsBlocked: 2, dnsAnswered: 1, lostRecords: 0, records: 5 },
    modelDown: false,
    ...over,
  };
}

function rec(time: string, over: Partial<AuditRecord>): AuditRecord {
  return { time, runId: 'r1', task: 'fix', iteration: 1, role: 'agent', kind: 'packet', protocol: 'tcp', family: 'ipv4', direction: 'out', src: '10.0.0.2', srcPort: 1, dst: '10.0.0.3', dstPort: 7000, uid: 1000, query: null, queryType: null, icmpType: null, verdict: 'rejected', rule: 'out-tcp', count: 1, ...over };
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'lbx-report-unit-'));
  env = { LOOPBOX_STATE_DIR: path.join(root, 'state') };
  const repo = path.join(root, 'repo');
  await mkdir(repo);
  await git(repo, 'init', '-q', '-b', 'main');
  await writeFile(path.join(repo, 'calc.js'), 'a - b\n');
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-qm', 'base');
  const baseTree = await git(repo, 'rev-parse', 'HEAD^{tree}');
  await writeFile(path.join(repo, 'calc.js'), 'a + b\n');
  await writeFile(path.join(repo, `${HOSTILE_FILE}.txt`), 'x\ny\n');
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-qm', `fix ${HOSTILE}`);
  const commit = await git(repo, 'rev-parse', 'HEAD');

  const dir = path.join(env.LOOPBOX_STATE_DIR!, 'runs', 'r1');
  await mkdir(dir, { recursive: true });
  const state: LoopState = { runId: 'r1', task: 'fix', taskFile: 'tasks/fix.md', repo, branch: 'loopbox/fix', worktree: repo, baseTree, trees: [], iteration: 2, tokens: 20, elapsedMs: 4200, endState: 'done', endReason: 'verification passed after 2 iteration(s)', trigger: 'manual' };
  await writeFile(path.join(dir, 'state.json'), JSON.stringify(state));
  await writeFile(path.join(dir, 'run.json'), JSON.stringify({ runId: 'r1', kind: 'loop', pid: 1, pidStart: null, hostname: 'x', startedAt: '2026-01-01T00:00:00Z', endedAt: '2026-01-01T00:00:09Z' }));
  await writeFile(path.join(dir, 'config.json'), JSON.stringify({ model: { gguf: '/m/qwen.gguf', ctxSize: 8192 } }));
  const its = [iteration(1, { filesChanged: [`A ${HOSTILE_FILE}.txt`] }), iteration(2, { verified: true, commit, verify: { passed: true, exitCode: 0, timedOut: false, durationMs: 200, outputTail: '' } })];
  await writeFile(path.join(dir, 'iterations.jsonl'), its.map((i) => JSON.stringify(i)).join('\n') + '\n');
  const audit = [
    { kind: 'header', format: 'loopbox-audit/1', runId: 'r1', seq: 0, prev: null, hash: 'h0' },
    rec('2026-01-01T00:00:02.100Z', {}),
    rec('2026-01-01T00:00:02.200Z', {}),
    rec('2026-01-01T00:00:02.300Z', { protocol: 'udp', dstPort: 53, rule: 'out-udp' }),
    rec('2026-01-01T00:00:03.000Z', { kind: 'dns', protocol: 'dns', dst: null, query: `${HOSTILE}.invalid`, queryType: 'A', verdict: 'nxdomain', rule: 'dns' }),
    rec('2026-01-01T00:00:04.000Z', { iteration: 2, kind: 'dns', protocol: 'dns', dst: null, query: `${HOSTILE}.invalid`, queryType: 'AAAA', verdict: 'nxdomain', rule: 'dns' }),
    rec('2026-01-01T00:00:04.500Z', { iteration: 2, kind: 'model-denied', protocol: 'http', query: '/slots', queryType: 'GET', verdict: 'denied', rule: 'gateway 403 path' }),
    rec('2026-01-01T00:00:05.000Z', { iteration: 2, kind: 'loss', verdict: 'lost', count: 7, rule: 'firewall logged 9, 2 arrived' }),
  ];
  await writeFile(path.join(dir, 'audit.jsonl'), audit.map((r) => JSON.stringify(r)).join('\n') + '\n');
  await writeFile(path.join(dir, 'model.jsonl'), [{ promptTokens: 100, cachedTokens: 40, completionTokens: 5, denied: null }, { promptTokens: null, completionTokens: null, denied: 'path' }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  data = await gatherReport('r1', { version: '0.1.0', env });
  html = renderReport(data);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('run report', () => {
  it('has the run\'s end state, iterations, blocked count, verified commit and its diff', () => {
    expect(data).toMatchObject({ endState: 'done', exitCode: 0, tokens: 20, blocked: 10 });
    expect(data.iterations).toHaveLength(2);
    expect(data.verified?.files.map((f) => [f.path, f.added, f.deleted])).toEqual([
      [`${HOSTILE_FILE}.txt`, 2, 0],
      ['calc.js', 1, 1],
    ]);
    expect(data.verified?.message).toContain('fix "><script>');
  });

  it('groups blocked egress by destination and name, counts the gateway\'s refusals and lost records, skips the chain header', () => {
    const e = data.egress;
    expect(e).toMatchObject({ records: 7, attempts: 6, packets: 3, dns: 2, modelDenied: 1, lost: 7 });
    expect(e.groups.map((g) => [g.kind, g.key, g.count, g.detail, g.iterations])).toEqual([
      ['dns', `${HOSTILE}.invalid`, 2, ['A', 'AAAA'], [1, 2]],
      ['packet', 'tcp 10.0.0.3:7000', 2, ['out-tcp'], [1]],
      ['model-denied', 'GET /slots', 1, ['gateway 403 path'], [2]],
      ['packet', 'udp 10.0.0.3:53', 1, ['out-udp'], [1]],
    ]);
    // Seconds since the first attempt: [second, packets (and refused model requests), DNS].
    expect(e.perSecond).toEqual([
      [0, 3, 1],
      [1, 0, 1],
      [2, 1, 0],
    ]);
    expect(data.model).toMatchObject({ name: 'qwen.gguf', ctxSize: 8192, allowedPackets: 8, allowedBytes: 800, requests: { 'model-denied': 1 }, gateway: { requests: 2, denied: 1, promptTokens: 100, cachedTokens: 40, completionTokens: 5, deniedWhy: { path: 1 } } });
    // These records were written by hand, not by the chained writer: the report says so.
    expect(data.chain.status).toBe('broken');
  });

  it('escapes everything the agent chose: no tag, attribute or script of its own reaches the page', () => {
    expect(html).not.toContain('<script>document.title');
    expect(html).not.toContain('<img');
    expect(html).not.toMatch(/<svg onload/);
    expect(html).toContain('&quot;&gt;&lt;svg onload=alert(1)&gt;&lt;img src=x onerror=alert(1)&gt;.txt');
    expect(html).toContain('&quot;&gt;&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;.invalid');
    // One script element: the report's own, with the nonce the CSP names.
    const scripts = [...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
    expect(scripts).toHaveLength(1);
    const nonce = /script-src 'nonce-([^']+)'/.exec(html)?.[1];
    expect(nonce).toBeTruthy();
    expect(scripts[0]).toBe(`<script nonce="${nonce}">`);
  });

  it('references nothing outside the file and forbids fetching anything', () => {
    expect(html).toMatch(/<meta http-equiv="Content-Security-Policy" content="default-src 'none';/);
    // No element of the page loads or links anything (agent text is escaped, so every tag is ours).
    expect(html).not.toMatch(/<[a-z][^>]*\s(href|src|action|formaction|xlink:href)=/i);
    expect(html).not.toMatch(/url\(|@import/i);
    expect(html).toContain('data-testid="iterations">2<');
    expect(html).toContain('data-testid="blocked">10<');
    expect(html).toContain('data-testid="end-state">done<');
  });

  it('writeReports: each run\'s report.html in its run directory; a run without one says why, and the others are still written', async () => {
    await mkdir(path.join(env.LOOPBOX_STATE_DIR!, 'runs', 'sandbox-only'), { recursive: true });
    const res = await writeReports(['sandbox-only', 'r1', 'gone'], { version: '0.1.0', env });
    expect(res.map((r) => r.runId)).toEqual(['sandbox-only', 'r1', 'gone']);
    expect(res[0]).toEqual({ runId: 'sandbox-only', error: 'Run sandbox-only has no state.json: it is not a loop run.' });
    expect(res[1]?.file).toBe(path.join(env.LOOPBOX_STATE_DIR!, 'runs', 'r1', 'report.html'));
    expect(await readFile(res[1]!.file!, 'utf8')).toContain('data-testid="end-state">done<');
    expect(res[2]?.file).toBeUndefined();
    expect(res[2]?.error).toMatch(/^No run gone under /);
  });
});
