import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { commitMessage, feedbackText } from '../../src/loop/feedback.js';
import { type ReportOutcome, type VerifyEvidence, account, accountingRecord, evidenceSummary, evidenceTrailers, makeBaseline, noTestsMarker } from '../../src/verify/accounting.js';
import { parseReport } from '../../src/verify/report.js';

const tap = (lines: string[]): ReportOutcome => ({ kind: 'ok', report: parseReport('tap', ['TAP version 13', ...lines].join('\n')) });
const run = (report: ReportOutcome, exitCode = 0, outputTail = ''): VerifyEvidence => ({ exitCode, timedOut: false, outputTail, report });

// The base commit of a typical task: one failing test to fix, two passing, one skipped.
const base = makeBaseline(run(tap(['ok 1 - mul', 'ok 2 - sub', 'not ok 3 - add', 'ok 4 - slow # SKIP']), 1));

describe('test accounting', () => {
  it('the baseline records every test and does not pass while a test fails', () => {
    expect(base).toMatchObject({ passes: false, exitCode: 1, tests: { mul: 'passed', sub: 'passed', add: 'failed', slow: 'skipped' }, counts: { total: 4, passed: 2, failed: 1, skipped: 1 } });
  });

  it('an honest fix is verified: exit 0, every base test ran, the failing one passes', () => {
    const a = account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 3 - add', 'ok 4 - slow # SKIP', 'ok 5 - new test'])));
    expect(a).toMatchObject({ verified: true, mode: 'report', reasons: [], vacuous: false, counts: { passed: 4 } });
  });

  it('an early exit at import (the file reported as one passing test) is not verified', () => {
    const a = account(base, run(tap(['ok 1 - /workspace/test/calc.test.js'])));
    expect(a.verified).toBe(false);
    expect(a.missing).toEqual(['mul', 'sub', 'add', 'slow']);
    expect(a.reasons.join('\n')).toMatch(/4 test\(s\) of the base commit did not run: "mul", "sub", "add", "slow"/);
  });

  it('skipping the failing test, or dropping it, is not verified', () => {
    expect(account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 3 - add # SKIP', 'ok 4 - slow # SKIP'])))).toMatchObject({ verified: false, skippedNow: ['add'] });
    expect(account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 4 - slow # SKIP'])))).toMatchObject({ verified: false, missing: ['add'] });
  });

  it('a failure in the report fails even with exit code 0, and exit code 1 fails with a clean report', () => {
    expect(account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 3 - add', 'ok 4 - slow # SKIP', 'not ok 5 - new'])))).toMatchObject({ verified: false, failed: ['new'] });
    expect(account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 3 - add', 'ok 4 - slow # SKIP']), 1)).reasons).toEqual(['the verify command exited 1']);
  });

  it('a missing, planted or unparsable report is not verified', () => {
    for (const report of [{ kind: 'missing', detail: 'the verify command wrote no report' }, { kind: 'invalid', detail: 'planted' }] as const) {
      const a = account(base, run(report));
      expect(a.verified).toBe(false);
      expect(a.reasons).toEqual([`no usable test report: ${report.detail}`]);
    }
  });

  it('zero tests is vacuous and not a pass, with or without a baseline', () => {
    const empty = run({ kind: 'ok', report: parseReport('tap', readFileSync(path.join(import.meta.dirname, '..', 'fixtures', 'reports', 'node20-empty.tap'), 'utf8')) });
    expect(account(null, empty)).toMatchObject({ verified: false, vacuous: true });
    expect(account(null, run(tap(['ok 1 - x # SKIP'])))).toMatchObject({ verified: false, vacuous: true });
    expect(makeBaseline(empty).passes).toBe(false);
  });

  it('without a report: exit-code-only, vacuous when the runner says it ran nothing, "cannot tell" otherwise', () => {
    const none = { kind: 'not-configured' } as const;
    expect(account(null, run(none, 0, 'all tests passed\n'))).toMatchObject({ verified: true, mode: 'exit-code-only', vacuous: null });
    expect(account(null, run(none, 0, '✔ x\nℹ tests 0\nℹ pass 0\n'))).toMatchObject({ verified: false, vacuous: true });
  });

  it('when verify passes on the base commit, an unchanged tree is not verified', () => {
    const passing = makeBaseline(run(tap(['ok 1 - a'])));
    expect(passing.passes).toBe(true);
    expect(account(passing, run(tap(['ok 1 - a'])), { unchangedFromBase: true })).toMatchObject({ verified: false });
    expect(account(passing, run(tap(['ok 1 - a'])), { unchangedFromBase: false }).verified).toBe(true);
    expect(account(base, run(tap(['ok 1 - mul', 'ok 2 - sub', 'ok 3 - add', 'ok 4 - slow # SKIP'])), { unchangedFromBase: true }).verified).toBe(true);
  });

  it('recognises the runners\' own "no tests" lines', () => {
    expect(noTestsMarker('TAP version 13\n1..0\n# tests 0\n# pass 0\n')).toBe('# tests 0');
    expect(noTestsMarker('ℹ tests 0\n')).toBe('ℹ tests 0');
    expect(noTestsMarker('\nno tests ran in 0.01s\n')).toBe('no tests ran in 0.01s');
    expect(noTestsMarker('No test files found, exiting with code 1\n')).toMatch(/No test files found/);
    expect(noTestsMarker('?   \tex/a\t[no test files]\n')).toBe('[no test files]');
    expect(noTestsMarker('?   \tex/a\t[no test files]\nok  \tex/b\t0.1s\n')).toBeUndefined();
    expect(noTestsMarker('running 0 tests\n\nrunning 0 tests\n')).toBe('running 0 tests');
    expect(noTestsMarker('running 0 tests\nrunning 3 tests\n')).toBeUndefined();
    expect(noTestsMarker('# tests 10\n')).toBeUndefined();
  });
});

describe('what the loop writes from the accounting', () => {
  const result = { passed: true, exitCode: 0, timedOut: false, durationMs: 1, copyMs: 0, outputTail: 'ok 1 - /workspace/test/calc.test.js\n', report: { kind: 'missing', detail: 'x' } as const };

  it('a commit that exited 0 without evidence is not verified and says what it rests on', () => {
    const early = account(base, run(tap(['ok 1 - /workspace/test/calc.test.js'])));
    const record = accountingRecord(early, base);
    const message = commitMessage({ task: 't', runId: 'r', iteration: 1, verify: result, accounting: { verified: false, evidence: 'test-report', record }, command: ['node', '--test'] });
    expect(message).toContain('Loopbox-Verified: no');
    expect(message).toMatch(/^loopbox\(t\): iteration 1 wip \(verify not accepted\)/);
    expect(message).toContain('Loopbox-Verify: test-report\nLoopbox-Tests: 1 passed, 0 failed, 0 skipped');
    expect(evidenceTrailers(accountingRecord(account(null, run({ kind: 'not-configured' })), null))).toEqual(['Loopbox-Verify: exit-code-only']);
  });

  it('the feedback tells the agent why exit 0 was not accepted, with the output', () => {
    const record = accountingRecord(account(base, run(tap(['ok 1 - /workspace/test/calc.test.js']))), base);
    const text = feedbackText(
      {
        iteration: 1, startedAt: '', endedAt: '', agent: { exitCode: 0, timedOut: false, durationMs: 1 }, tree: 't', filesChanged: ['M calc.js'], protectedViolations: [], skipped: [], untrusted: null,
        verify: { passed: true, exitCode: 0, timedOut: false, durationMs: 1, outputTail: 'ok 1 - /workspace/test/calc.test.js', accounting: record },
        commit: null, verified: false, tokens: 0, audit: { allowedPackets: 0, allowedBytes: 0, blockedPackets: 0, dnsBlocked: 0, dnsAnswered: 0, lostRecords: 0, records: 0 }, modelDown: false,
      },
      ['node', '--test'],
      60_000,
    );
    expect(text).toContain('exited 0 but is not accepted');
    expect(text).toContain('4 test(s) of the base commit did not run: "mul", "sub", "add", "slow"');
    expect(text).toContain('ok 1 - /workspace/test/calc.test.js');
  });

  it('the summary phrase says how many tests, what is missing, and whether the base passed', () => {
    expect(evidenceSummary(accountingRecord(account(base, run(tap(['ok 1 - x']))), base))).toBe('1 passed, 0 failed, 4 base test(s) missing or skipped');
    expect(evidenceSummary(accountingRecord(account(makeBaseline(run(tap(['ok 1 - a']))), run(tap(['ok 1 - a']))), makeBaseline(run(tap(['ok 1 - a'])))))).toBe('1 passed, 0 failed, base passes');
    expect(evidenceSummary(null)).toBe('-');
  });
});
