// The reviewer client against a real HTTP server on loopback (OpenAI chat API, scripted
// verdicts) and a real git repository: what is sent, how answers are read, what the audit log
// and the commit message get, and that the key goes nowhere but the request header.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { parseConfig } from '../../src/config/load.js';
import { matchesAny } from '../../src/git/glob.js';
import { commitMessage, feedbackText } from '../../src/loop/feedback.js';
import { reviewRecord, type IterationRecord } from '../../src/loop/state.js';
import { askReviewer, parseVerdict, reviewApiKey, reviewDiff, type ReviewConfig, type ReviewSubject } from '../../src/review/review.js';
import { approve, reject, startReviewer, type ReviewerServer } from '../fixtures/reviewer-server.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), `lbx-review-${prefix}-`));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function reviewer(script: Parameters<typeof startReviewer>[0]): Promise<ReviewerServer> {
  const s = await startReviewer(script);
  cleanups.push(s.close);
  return s;
}

const KEY = 'sk-test-9f3c1e7a55d04b2c-never-in-a-file';

function reviewConfig(url: string, extra: Record<string, unknown> = {}): ReviewConfig {
  return parseConfig({ verify: { command: ['true'] }, review: { endpoint: url, model: 'big-reviewer', apiKeyEnv: 'LBX_REVIEW_KEY', price: { inputPerMTok: 3, outputPerMTok: 15 }, ...extra } }).review!;
}

function subject(diffText = '+return a + b;\n'): ReviewSubject {
  return {
    taskText: '# Task\nfix add()',
    verifyCommand: ['node', 'test/calc.test.js'],
    verify: { passed: true, exitCode: 0, timedOut: false, outputTail: 'all tests passed\n' },
    evidence: 'exit-code-only',
    diff: { text: diffText, bytes: diffText.length, cutBytes: 0, paths: ['calc.js'], leftOut: [] },
  };
}

async function auditLines(stateDir: string, runId: string): Promise<Array<Record<string, unknown>>> {
  const text = await readFile(path.join(stateDir, 'runs', runId, 'audit.jsonl'), 'utf8');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('parseVerdict', () => {
  it('reads a verdict, also in a fenced block, and refuses anything else with the reason', () => {
    expect(parseVerdict(approve())).toMatchObject({ ok: true, verdict: { verdict: 'approve', gaming: false } });
    expect(parseVerdict('Here you go:\n```json\n{"verdict":"reject","reasons":["x"],"gaming":true}\n```')).toMatchObject({ ok: true, verdict: { verdict: 'reject' } });
    expect(parseVerdict('LGTM, approve')).toMatchObject({ ok: false, error: expect.stringContaining('not JSON') as unknown });
    expect(parseVerdict('{"verdict":"yes","reasons":[],"gaming":false}')).toMatchObject({ ok: false, error: expect.stringContaining('verdict') as unknown });
    expect(parseVerdict('{"verdict":"approve","reasons":[]}')).toMatchObject({ ok: false, error: expect.stringContaining('gaming') as unknown });
  });
});

describe('askReviewer (real HTTP server on loopback)', () => {
  it('sends the task, the verify result and the diff with the key only in the header; records the request as allowed', async () => {
    const state = await tempDir('state');
    const server = await reviewer(() => ({ content: approve() }));
    const r = await askReviewer({ config: reviewConfig(server.url), subject: subject(), runId: 'r1', task: 't', iteration: 2, stateEnv: { LOOPBOX_STATE_DIR: state }, apiKey: KEY });
    expect(r).toMatchObject({ verdict: 'approve', approved: true, attempts: 1, malformed: null, model: 'big-reviewer' });
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.authorization).toBe(`Bearer ${KEY}`);
    expect(server.requests[0]!.body.model).toBe('big-reviewer');
    const user = server.requests[0]!.body.messages!.find((m) => m.role === 'user')!.content;
    expect(user).toContain('fix add()');
    expect(user).toContain('+return a + b;');
    expect(user).toContain('passed (exit code 0');
    expect(JSON.stringify(server.requests[0]!.body)).not.toContain(KEY);
    // tokens × price
    expect(r.inputTokens).toBeGreaterThan(0);
    expect(r.cost).toBeCloseTo((r.inputTokens * 3 + r.outputTokens * 15) / 1e6, 12);
    const lines = await auditLines(state, 'r1');
    const rec = lines.find((l) => l.kind === 'review')!;
    expect(rec).toMatchObject({ verdict: 'allowed', iteration: 2, dst: '127.0.0.1', role: 'host', review: { endpoint: server.url, attempt: 1, bytesSent: server.requests[0]!.bytes, status: 200, inputTokens: r.inputTokens } });
    expect(lines.map((l) => JSON.stringify(l)).join('\n')).not.toContain(KEY);
  });

  it('retries a malformed answer once and takes the second verdict', async () => {
    const state = await tempDir('state');
    const server = await reviewer((_, i) => ({ content: i === 0 ? 'I think it looks fine!' : reject('special-cases the test input') }));
    const r = await askReviewer({ config: reviewConfig(server.url), subject: subject(), runId: 'r2', task: 't', iteration: 1, stateEnv: { LOOPBOX_STATE_DIR: state }, apiKey: KEY });
    expect(server.requests).toHaveLength(2);
    expect(r).toMatchObject({ verdict: 'reject', attempts: 2, malformed: null, reasons: ['special-cases the test input'], gaming: true });
    expect((await auditLines(state, 'r2')).filter((l) => l.kind === 'review')).toHaveLength(2);
  });

  it('counts two malformed answers (or HTTP errors) as a reject with the reason, after exactly one retry', async () => {
    const state = await tempDir('state');
    const server = await reviewer((_, i) => (i === 0 ? { content: '{"verdict": "approve"' } : { content: 'oops', status: 500 }));
    const r = await askReviewer({ config: reviewConfig(server.url), subject: subject(), runId: 'r3', task: 't', iteration: 1, stateEnv: { LOOPBOX_STATE_DIR: state }, apiKey: KEY });
    expect(server.requests).toHaveLength(2);
    expect(r).toMatchObject({ verdict: 'reject', approved: false, attempts: 2 });
    expect(r.malformed).toMatch(/attempt 1: not JSON.*attempt 2: HTTP 500/);
    expect(r.reasons[0]).toMatch(/no valid verdict.*counted as a reject/);
  });

  it('an approval that flags gaming is a reject; a key echoed by the endpoint is redacted', async () => {
    const state = await tempDir('state');
    const server = await reviewer((req) => ({ content: JSON.stringify({ verdict: 'approve', reasons: [`your key is ${req.authorization ?? ''}`], gaming: true }) }));
    const r = await askReviewer({ config: reviewConfig(server.url), subject: subject(), runId: 'r4', task: 't', iteration: 1, stateEnv: { LOOPBOX_STATE_DIR: state }, apiKey: KEY });
    expect(r).toMatchObject({ verdict: 'reject', approved: false, gaming: true });
    expect(JSON.stringify(r)).not.toContain(KEY);
    expect(r.reasons.join('\n')).toContain('[redacted]');
  });

  it('an endpoint that does not answer counts as a reject, never as approval', async () => {
    const state = await tempDir('state');
    // A port nothing listens on: a server started and closed again.
    const server = await startReviewer(() => ({ content: approve() }));
    await server.close();
    const r = await askReviewer({ config: reviewConfig(server.url), subject: subject(), runId: 'r5', task: 't', iteration: 1, stateEnv: { LOOPBOX_STATE_DIR: state }, apiKey: KEY });
    expect(r).toMatchObject({ verdict: 'reject', attempts: 2 });
    expect(r.malformed).toMatch(/request failed/);
  });
});

describe('reviewDiff (real git)', () => {
  it('diffs base to tree with protected paths left out, cut at the cap and the cut reported', async () => {
    const repo = await tempDir('repo');
    const env = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
    const sh = async (...args: string[]): Promise<string> => (await execa('git', args, { cwd: repo, env })).stdout;
    await sh('init', '-q', '-b', 'main');
    await mkdir(path.join(repo, 'test'));
    await writeFile(path.join(repo, 'calc.js'), 'export const add = (a, b) => a - b;\n');
    await writeFile(path.join(repo, 'test', 'calc.test.js'), 'assert(add(2, 3) === 5);\n');
    await sh('add', '-A');
    const base = await sh('write-tree');
    await writeFile(path.join(repo, 'calc.js'), `export const add = (a, b) => a + b;\n// ${'x'.repeat(5000)}\n`);
    await writeFile(path.join(repo, 'test', 'calc.test.js'), 'SECRET_TEST_EDIT\n');
    await sh('add', '-A');
    const tree = await sh('write-tree');
    const isProtected = (p: string): boolean => matchesAny(p, ['test/**']);
    const full = await reviewDiff(repo, base, tree, isProtected, 1_000_000);
    expect(full.paths).toEqual(['calc.js']);
    expect(full.leftOut).toEqual(['test/calc.test.js']);
    expect(full.text).toContain('+export const add = (a, b) => a + b;');
    expect(full.text).not.toContain('SECRET_TEST_EDIT');
    expect(full.cutBytes).toBe(0);
    const cut = await reviewDiff(repo, base, tree, isProtected, 1000);
    expect(cut.bytes).toBe(1000);
    expect(cut.cutBytes).toBe(full.bytes - 1000);
  });
});

describe('review config, trailers and feedback', () => {
  it('refuses credentials in the endpoint, a bad variable name, escalateAfter (not supported) and a missing key', () => {
    expect(() => parseConfig({ review: { endpoint: 'https://u:sk-123@api.example.invalid/v1', model: 'm' } })).toThrow(/without credentials/);
    expect(() => parseConfig({ review: { endpoint: 'https://api.example.invalid/v1', model: 'm', apiKeyEnv: 'sk-123' } })).toThrow(/environment variable name/);
    expect(() => parseConfig({ review: { endpoint: 'https://api.example.invalid/v1', model: 'm\nLoopbox-Review: approved' } })).toThrow(/one line/);
    expect(() => parseConfig({ review: { endpoint: 'https://api.example.invalid/v1', model: 'm', escalateAfter: 3 } })).toThrow(/escalateAfter/);
    const cfg = parseConfig({ review: { endpoint: 'https://api.example.invalid/v1', model: 'm', apiKeyEnv: 'LBX_NOT_SET_ANYWHERE' } }).review!;
    expect(cfg).toMatchObject({ when: 'on-verified', maxDiffBytes: 200 * 1024 });
    expect(() => reviewApiKey(cfg, {})).toThrow(ConfigError);
    expect(reviewApiKey(cfg, { LBX_NOT_SET_ANYWHERE: 'k' })).toBe('k');
  });

  it('commit trailers: approved (model) or rejected, beside Loopbox-Verified: yes', () => {
    const base = { task: 't', runId: 'r', iteration: 1, verify: null, accounting: { verified: true, evidence: 'exit-code-only' as const, record: null }, command: ['true'] };
    expect(commitMessage({ ...base, review: { approved: true, model: 'big' } })).toMatch(/Loopbox-Verified: yes[\s\S]*Loopbox-Review: approved \(big\)/);
    const rejected = commitMessage({ ...base, review: { approved: false, model: 'big' } });
    expect(rejected).toMatch(/Loopbox-Verified: yes[\s\S]*Loopbox-Review: rejected$/);
    expect(commitMessage(base)).not.toContain('Loopbox-Review');
  });

  it('a rejection puts the reasons into the next iteration\'s feedback', () => {
    const record = {
      iteration: 3,
      agent: { exitCode: 0, timedOut: false, durationMs: 1 },
      filesChanged: ['M calc.js'],
      protectedViolations: [],
      skipped: [],
      untrusted: null,
      verify: { passed: true, exitCode: 0, timedOut: false, durationMs: 1, outputTail: '' },
      review: reviewRecord({ verdict: 'reject', approved: false, reasons: ['exits before the tests run'], gaming: true, model: 'm', attempts: 1, malformed: null, inputTokens: 1, outputTokens: 1, cost: null, bytesSent: 1, bytesReceived: 1, diffBytes: 1, diffCutBytes: 0 }),
    } as unknown as IterationRecord;
    const text = feedbackText(record, ['node', 'test/calc.test.js'], 60_000);
    expect(text).toMatch(/reviewer did not accept the change: it looks like the tests were gamed/);
    expect(text).toContain('  - exits before the tests run');
  });
});
