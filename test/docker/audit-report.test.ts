// For security teams, against a real loop run (real Docker, sentry, llama-server, git): the
// audit log followed live in every format while the run writes it, exported as OCSF events that
// the OCSF schema accepts, and the run's HTML report loaded in a real headless Chromium.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { chromium } from 'playwright-core';
import { beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../src/audit/record.js';
import type { IterationRecord } from '../../src/loop/state.js';
import { OCSF_FIXTURE, OcsfSchema } from '../ocsf/validate.js';
import { cli, cliPath, makeLoopRepo, parseJsonLines, repoRoot, useTestRun } from './helpers.js';

const stateDir = process.env.LOOPBOX_STATE_DIR!;
const outputDir = path.join(repoRoot, 'test', '.output');
const schema = new OcsfSchema(OCSF_FIXTURE);
const HOSTILE_NAME = '<img src=x onerror=document.title=1>.txt';

// Each iteration: three TCP tries to the model's IP on a port the firewall closes (reset), one
// UDP datagram, one DNS look-up of a `.invalid` name, and a file with an HTML-injection name.
// Iteration 2 waits 4 s (so a follower has shown iteration 1 long before the run ends) and
// fixes the bug.
const AGENT = `set -u
i=$LOOPBOX_ITERATION
model=$(getent hosts model | cut -d' ' -f1)
for n in 1 2 3; do curl -s -m 2 "http://$model:8081/" >/dev/null; done
node -e "const d=require('dgram').createSocket('udp4'); d.send('x', 9999, process.argv[1], () => d.close())" "$model"
getent hosts "leak-$i.invalid" || true
echo hostile > '${HOSTILE_NAME}'
if [ "$i" -ge 2 ]; then sleep 4; sed -i 's/return a - b;/return a + b;/' calc.js; fi
exit 0`;

interface Follower {
  proc: ResultPromise;
  lines: Array<{ at: number; text: string }>;
}

function follow(args: string[]): Follower {
  const proc = execa('node', [cliPath, 'audit', '--follow', ...args], { reject: false, env: { LOOPBOX_AUDIT_POLL_MS: '100' }, all: true });
  const f: Follower = { proc, lines: [] };
  let rest = '';
  proc.stdout.on('data', (chunk: Buffer) => {
    const parts = (rest + chunk.toString('utf8')).split('\n');
    rest = parts.pop() ?? '';
    for (const text of parts) f.lines.push({ at: Date.now(), text });
  });
  return f;
}

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end && !cond(); ) await new Promise((r) => setTimeout(r, 100));
}

describe('audit follow, OCSF export and the run report (real loop run)', () => {
  const { track } = useTestRun('secteam');
  const task = `sec-${randomBytes(3).toString('hex')}`;
  let runId: string;
  let runEndedAt: number;
  let runStderr: string;
  let iterations: IterationRecord[];
  let records: AuditRecord[];
  const followers: Record<'table' | 'json' | 'ocsf', Follower> = {} as never;

  beforeAll(async () => {
    await execa(path.join(repoRoot, 'scripts', 'ensure-chromium.sh'), { stdio: 'inherit' });
    const c = track(
      await makeLoopRepo(
        {
          agent: { type: 'command', command: ['bash', '-c', AGENT], timeout: '60s' },
          verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
          protectedPaths: ['test/**', 'tools/**'],
          loop: { maxIterations: 4, noProgress: 3 },
          sandbox: { memory: '1g', cpus: 1, pids: 256 },
        },
        [task],
      ),
    );
    // Followers start before the run exists: they must find its log when it appears.
    followers.table = follow(['--task', task]);
    followers.json = follow(['--task', task, '--json']);
    followers.ocsf = follow(['--task', task, '--format', 'ocsf']);
    const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', `${task}.md`)], { timeoutMs: 300_000 });
    runEndedAt = Date.now();
    runStderr = res.stderr;
    expect(res.exitCode, res.all).toBe(0);
    const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: { runId: string } }>(res.stdout);
    runId = events.find((e) => e.type === 'loop-end')!.summary!.runId;
    iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
    records = parseJsonLines<AuditRecord>((await cli(['audit', '--run', runId, '--json'])).stdout);
  }, 600_000);

  it('the agent made blocked attempts of each kind in both iterations', () => {
    expect(iterations.map((i) => i.verified)).toEqual([false, true]);
    for (const it of [1, 2]) {
      const mine = records.filter((r) => r.iteration === it);
      expect(mine.filter((r) => r.kind === 'packet' && r.protocol === 'tcp' && r.dstPort === 8081)).toHaveLength(3);
      expect(mine.some((r) => r.kind === 'packet' && r.protocol === 'udp' && r.dstPort === 9999)).toBe(true);
      expect(mine.some((r) => r.kind === 'dns' && r.query === `leak-${it}.invalid`)).toBe(true);
    }
  });

  it('--follow printed records while the run was writing them, in every format, and stops on SIGINT', async () => {
    const n = records.length;
    await waitFor(() => followers.json.lines.length >= n && followers.ocsf.lines.length >= n && followers.table.lines.length >= n + 1, 10_000);
    for (const f of Object.values(followers)) f.proc.kill('SIGINT');
    const results = await Promise.all(Object.values(followers).map((f) => f.proc));
    for (const r of results) {
      expect(r.exitCode, String(r.all)).toBe(130);
      expect(String(r.stderr)).not.toMatch(/error|problem/i);
    }
    // The same records as the stored log, line for line (a follow of --task sees no other run).
    const json = followers.json.lines.map((l) => l.text);
    expect(json.map((l) => JSON.parse(l) as AuditRecord)).toEqual(records);
    // Iteration 1's records reached the follower before the run had ended (by more than the
    // 4 s iteration 2 waits): live, not after the fact.
    const firstIt1 = followers.json.lines.find((l) => (JSON.parse(l.text) as AuditRecord).iteration === 1)!;
    expect(runEndedAt - firstIt1.at).toBeGreaterThan(3000);
    const ocsf = followers.ocsf.lines.map((l) => JSON.parse(l.text) as Record<string, unknown>);
    expect(ocsf).toHaveLength(n);
    for (const e of ocsf) expect(schema.validate(e)).toEqual([]);
    expect(followers.ocsf.lines.find((l) => l.text.includes('"iteration:1"'))!.at).toBeLessThan(runEndedAt - 3000);
    const table = followers.table.lines.map((l) => l.text);
    expect(table[0]).toMatch(/^TIME \(UTC\)\s+RUN\s+TASK/);
    expect(table.slice(1)).toHaveLength(n);
    expect(table.slice(1).every((row) => row.includes(runId) && row.includes(task))).toBe(true);
    expect(followers.table.lines[1]!.at).toBeLessThan(runEndedAt - 3000);
  });

  it('--follow --run on a run that has ended prints its records and exits by itself', async () => {
    const res = await cli(['audit', '--follow', '--run', runId, '--json'], { timeoutMs: 20_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(parseJsonLines<AuditRecord>(res.stdout)).toEqual(records);
  });

  it('--format ocsf: every event passes the OCSF 1.8.0 schema; packets are Network Activity, look-ups DNS Activity', async () => {
    const res = await cli(['audit', '--run', runId, '--format', 'ocsf']);
    expect(res.exitCode, res.stderr).toBe(0);
    const events = parseJsonLines<Record<string, any>>(res.stdout); // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(events).toHaveLength(records.length);
    for (const e of events) expect(schema.validate(e)).toEqual([]);
    /* eslint-disable @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-return, @typescript-eslint/no-unsafe-call -- plain JSON events */
    const refused = events.filter((e) => e.class_uid === 4001 && e.activity_id === 5);
    expect(refused).toHaveLength(6);
    expect(refused[0]).toMatchObject({ type_uid: 400105, action_id: 2, disposition_id: 2, connection_info: { protocol_name: 'tcp', direction_id: 2 }, dst_endpoint: { port: 8081 }, actor: { user: { uid: expect.any(String) } } });
    expect(refused[0]!.src_endpoint.container.name).toBe(`loopbox-${runId}-${task}-i1-agent`);
    expect(refused[0]!.src_endpoint.container.image.name).toBe('loopbox/agent');
    expect(events.filter((e) => e.class_uid === 4001 && e.activity_id === 6 && e.connection_info.protocol_name === 'udp').length).toBeGreaterThanOrEqual(2);
    const dns = events.filter((e) => e.class_uid === 4003);
    expect(dns.map((e) => e.query.hostname)).toEqual(expect.arrayContaining(['leak-1.invalid', 'leak-2.invalid']));
    expect(dns.every((e) => e.activity_id === 1 && e.rcode_id === 3 && e.rcode === 'NXDomain')).toBe(true);
    expect(events.every((e) => e.metadata.correlation_uid === runId && e.metadata.labels.includes(`task:${task}`))).toBe(true);
    /* eslint-enable @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-return, @typescript-eslint/no-unsafe-call */
  });

  it('loopbox run printed the report path; Chromium renders the run\'s real numbers with no console error and no request', async () => {
    const file = path.join(stateDir, 'runs', runId, 'report.html');
    expect(runStderr).toContain(`report: ${file}`);
    expect(existsSync(file)).toBe(true);
    const html = await readFile(file, 'utf8');
    expect(html).not.toMatch(/<(link|img|iframe)\b|src=["']?https?:|url\(/i);
    const blocked = iterations.reduce((n, i) => n + i.audit.blockedPackets + i.audit.dnsBlocked, 0);
    expect(blocked).toBeGreaterThanOrEqual(10);

    const browser = await chromium.launch({
      executablePath: process.env.LOOPBOX_CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1000, height: 1400 } });
      const consoleErrors: string[] = [];
      const requests: string[] = [];
      const dialogs: string[] = [];
      page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
      page.on('pageerror', (e) => consoleErrors.push(e.message));
      page.on('request', (r) => requests.push(r.url()));
      page.on('dialog', (d) => {
        dialogs.push(d.message());
        void d.dismiss();
      });
      const url = pathToFileURL(file).href;
      await page.goto(url, { waitUntil: 'load' });
      expect(await page.textContent('[data-testid=iterations]')).toBe(String(iterations.length));
      expect(await page.textContent('[data-testid=end-state]')).toBe('done');
      expect(await page.textContent('[data-testid=blocked]')).toBe(String(blocked));
      expect(await page.locator('[data-testid=iteration-row]').count()).toBe(iterations.length);
      expect(await page.textContent('[data-testid=records]')).toBe(String(records.length));
      expect(await page.textContent('[data-testid=verified-commit]')).toBe(iterations[1]!.commit);
      expect(await page.textContent('[data-testid=chain-status]')).toBe('ok');
      expect(await page.locator('[data-testid=egress-chart] rect').count()).toBeGreaterThan(0);
      // The per-destination table: the closed port, 6 tries; each look-up name.
      const egress = await page.locator('[data-testid=egress-row]').allTextContents();
      expect(egress.some((r) => r.includes(':8081') && r.includes('6'))).toBe(true);
      expect(egress.some((r) => r.includes('leak-1.invalid'))).toBe(true);
      // The agent's file name is shown as text, not parsed as markup.
      await page.locator('details summary').first().click();
      expect(await page.locator('body').textContent()).toContain(HOSTILE_NAME);
      expect(await page.locator('img').count()).toBe(0);
      expect(await page.title()).toContain('loopbox report');
      // The sortable tables work (the inline script ran under the CSP).
      await page.locator('[data-testid=egress-table] th', { hasText: 'count' }).click();
      expect(await page.locator('[data-testid=egress-table] th.asc').count()).toBe(1);
      await mkdir(outputDir, { recursive: true });
      await page.screenshot({ path: path.join(outputDir, 'report.png'), fullPage: true });
      expect(consoleErrors).toEqual([]);
      expect(requests).toEqual([url]);
      expect(dialogs).toEqual([]);
    } finally {
      await browser.close();
    }
  });

  it('loopbox report -o writes the same report elsewhere; an unknown run is a clear error', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-report-'));
    try {
      const out = path.join(dir, 'r.html');
      const res = await cli(['report', runId, '-o', out]);
      expect(res.exitCode, res.all).toBe(0);
      expect(res.stdout.trim()).toBe(out);
      expect(await readFile(out, 'utf8')).toContain(`data-testid="iterations">${iterations.length}<`);
      const bad = await cli(['report', 'nope']);
      expect(bad.exitCode).toBe(2);
      expect(bad.stderr).toMatch(/No run nope under/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a large OCSF export is streamed', () => {
  it('100,000 records convert under a 40 MiB heap that the in-memory table cannot fit in', async () => {
    const state = await mkdtemp(path.join(tmpdir(), 'lbx-big-'));
    try {
      const run = 'big-run';
      const dir = path.join(state, 'runs', run);
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'run.json'), JSON.stringify({ runId: run, kind: 'test', pid: 1, pidStart: null, hostname: 'x', startedAt: '2026-01-01T00:00:00Z', endedAt: '2026-01-01T01:00:00Z' }));
      const base = Date.parse('2026-01-01T00:00:00Z');
      const lines: string[] = [];
      for (let i = 0; i < 100_000; i += 1) {
        lines.push(JSON.stringify({ time: new Date(base + i * 10).toISOString(), runId: run, task: 'big', iteration: 1 + Math.floor(i / 50_000), role: 'agent', kind: 'packet', protocol: 'udp', family: 'ipv4', direction: 'out', src: '10.0.0.2', srcPort: 40000 + (i % 1000), dst: '10.0.0.3', dstPort: 53, uid: 1000, query: null, queryType: null, icmpType: null, verdict: 'rejected', rule: 'out-udp', count: 1 }));
      }
      await writeFile(path.join(dir, 'audit.jsonl'), `${lines.join('\n')}\n`);
      lines.length = 0;
      const out = path.join(state, 'out.ocsf.jsonl');
      const env = { LOOPBOX_STATE_DIR: state, NODE_OPTIONS: '--max-old-space-size=40' };
      // stdout straight into the file (the shell's redirection), not through this process's memory.
      const res = await execa('sh', ['-c', 'exec node "$0" audit --run "$1" --format ocsf > "$2"', cliPath, run, out], { env, reject: false, stderr: 'pipe' });
      expect(res.exitCode, String(res.stderr)).toBe(0);
      const text = await readFile(out, 'utf8');
      const events = text.split('\n').filter(Boolean);
      expect(events).toHaveLength(100_000);
      for (const i of [0, 49_999, 99_999]) expect(schema.validate(JSON.parse(events[i]!) as Record<string, unknown>)).toEqual([]);
      // The same log as a table is built in memory, and runs out of that heap: the limit is real.
      const table = await execa('node', [cliPath, 'audit', '--run', run], { env, reject: false, stdout: 'ignore', stderr: 'pipe' });
      expect(table.exitCode).not.toBe(0);
      expect(String(table.stderr)).toMatch(/heap out of memory/i);
    } finally {
      await rm(state, { recursive: true, force: true });
    }
  }, 240_000);
});
