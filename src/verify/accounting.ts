// Test accounting: whether a verify run is positive evidence that the task is done, not just an
// exit code of 0. An early `process.exit(0)` in the code under test, a skipped test or a run of
// zero tests all exit 0; compared with what passed on the task's base commit, they do not pass.
// (issue 7 item 5, issue 12 item 3)
import { type ReportCounts, type TestReport, type TestStatus, countTests } from './report.js';

/** What the verify container handed back about the report. */
export type ReportOutcome =
  | { kind: 'not-configured' }
  | { kind: 'ok'; report: TestReport }
  | { kind: 'missing' | 'invalid'; detail: string };

export interface VerifyEvidence {
  exitCode: number;
  timedOut: boolean;
  /** The tail of the command's output, for runners' own "no tests" lines without a report. */
  outputTail: string;
  report: ReportOutcome;
}

/** The verify command on the task's base commit, run once per loop run. */
export interface Baseline {
  exitCode: number;
  timedOut: boolean;
  /** Verify, with accounting, passes on the base commit: it cannot tell when the task is done. */
  passes: boolean;
  /** Tests in the base commit's report and how each ended; null without a report. */
  tests: Record<string, TestStatus> | null;
  counts: ReportCounts | null;
  /** Why no report came back when one was configured. */
  reportProblem: string | null;
}

export interface Accounting {
  verified: boolean;
  mode: 'report' | 'exit-code-only';
  /** Why the run is not verified; empty when it is. */
  reasons: string[];
  counts: ReportCounts | null;
  /** true: zero tests ran; false: some did; null: cannot tell (no report, no "no tests" line). */
  vacuous: boolean | null;
  /** Base tests absent from this report, and base tests skipped now that were not at base. */
  missing: string[];
  skippedNow: string[];
  failed: string[];
}

export interface AccountOptions {
  /** The tree equals the base commit's: nothing changed for the task. */
  unchangedFromBase?: boolean;
}

const LIST_MAX = 10;

function list(ids: string[]): string {
  const shown = ids.slice(0, LIST_MAX).map((id) => JSON.stringify(id));
  return ids.length > LIST_MAX ? `${shown.join(', ')} and ${ids.length - LIST_MAX} more` : shown.join(', ');
}

export function account(baseline: Baseline | null, evidence: VerifyEvidence, options: AccountOptions = {}): Accounting {
  const reasons: string[] = [];
  if (evidence.timedOut) reasons.push('the verify command timed out');
  else if (evidence.exitCode !== 0) reasons.push(`the verify command exited ${evidence.exitCode}`);
  const result: Accounting = {
    verified: false,
    mode: evidence.report.kind === 'not-configured' ? 'exit-code-only' : 'report',
    reasons,
    counts: null,
    vacuous: null,
    missing: [],
    skippedNow: [],
    failed: [],
  };

  if (evidence.report.kind === 'not-configured') {
    const marker = noTestsMarker(evidence.outputTail);
    if (marker) {
      result.vacuous = true;
      reasons.push(`no tests ran (the runner printed "${marker}")`);
    }
  } else if (evidence.report.kind !== 'ok') {
    reasons.push(`no usable test report: ${evidence.report.detail}`);
  } else {
    const { report } = evidence.report;
    const counts = countTests(report);
    result.counts = counts;
    result.vacuous = counts.passed + counts.failed === 0;
    if (report.bailedOut) reasons.push('the test runner bailed out');
    if (result.vacuous) reasons.push(`the report lists no test that ran (${counts.total} listed, ${counts.skipped} skipped)`);
    const now = new Map(report.tests.map((t) => [t.id, t.status]));
    result.failed = report.tests.filter((t) => t.status === 'failed').map((t) => t.id);
    if (result.failed.length) reasons.push(`${result.failed.length} test(s) failed: ${list(result.failed)}`);
    if (baseline?.tests) {
      for (const [id, before] of Object.entries(baseline.tests)) {
        const after = now.get(id);
        if (after === undefined) result.missing.push(id);
        else if (after === 'skipped' && before !== 'skipped') result.skippedNow.push(id);
      }
      if (result.missing.length) reasons.push(`${result.missing.length} test(s) of the base commit did not run: ${list(result.missing)}`);
      if (result.skippedNow.length) reasons.push(`${result.skippedNow.length} test(s) of the base commit are skipped now: ${list(result.skippedNow)}`);
    }
  }
  if (baseline?.passes && options.unchangedFromBase) {
    reasons.push('nothing changed, and verify already passes on the base commit: that proves nothing about this task');
  }
  result.verified = reasons.length === 0;
  return result;
}

/** The verify command's verdict on the base commit, to compare every iteration with. */
export function makeBaseline(evidence: VerifyEvidence): Baseline {
  const own = account(null, evidence);
  const report = evidence.report;
  return {
    exitCode: evidence.exitCode,
    timedOut: evidence.timedOut,
    passes: own.verified,
    tests: report.kind === 'ok' ? Object.fromEntries(report.report.tests.map((t) => [t.id, t.status])) : null,
    counts: own.counts,
    reportProblem: report.kind === 'missing' || report.kind === 'invalid' ? report.detail : null,
  };
}

/** The line, if any, in which a test runner says it ran no tests (used without a report). */
export function noTestsMarker(output: string): string | undefined {
  const patterns: RegExp[] = [
    /^[#ℹ]\s*tests 0\s*$/m, // node --test (tap and spec reporters)
    /^.*\bno tests ran\b.*$/im, // pytest (exit code 5 too)
    /^.*\bNo test files found\b.*$/m, // vitest
    /^.*\bNo tests found\b.*$/m, // jest
    /^\s*0 passing\b.*$/m, // mocha
  ];
  for (const p of patterns) {
    const m = p.exec(output);
    if (m) return m[0].trim();
  }
  // go test: every package says "[no test files]" and none says ok/FAIL.
  if (/\[no test files\]/.test(output) && !/^(ok|FAIL)\s/m.test(output)) return '[no test files]';
  // cargo test: every test binary says "running 0 tests".
  const running = [...output.matchAll(/^running (\d+) tests?$/gm)];
  if (running.length && running.every((m) => m[1] === '0')) return 'running 0 tests';
  return undefined;
}

/** Said before the first iteration when the base commit already passes (issue 12 item 3). */
export const BASE_PASSES_NOTICE = 'verify passes on the base commit: it cannot tell when this task is done';

/** What iterations.jsonl keeps of an accounting (lists capped). */
export interface AccountingRecord {
  mode: Accounting['mode'];
  verified: boolean;
  reasons: string[];
  counts: ReportCounts | null;
  vacuous: boolean | null;
  /** Verify passed on the base commit (null: no baseline for this run). */
  basePasses: boolean | null;
  missing: string[];
  skippedNow: string[];
  failed: string[];
}

export function accountingRecord(a: Accounting, baseline: Baseline | null): AccountingRecord {
  const cap = (ids: string[]): string[] => ids.slice(0, 50);
  return {
    mode: a.mode,
    verified: a.verified,
    reasons: a.reasons,
    counts: a.counts,
    vacuous: a.vacuous,
    basePasses: baseline ? baseline.passes : null,
    missing: cap(a.missing),
    skippedNow: cap(a.skippedNow),
    failed: cap(a.failed),
  };
}

/** Commit trailers that say what "verified" rested on. */
export function evidenceTrailers(a: AccountingRecord | null): string[] {
  if (!a) return [];
  if (a.mode === 'exit-code-only') return ['Loopbox-Verify: exit-code-only'];
  const c = a.counts;
  return ['Loopbox-Verify: test-report', ...(c ? [`Loopbox-Tests: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`] : [])];
}

/** One short phrase for tables and log lines: what the evidence was. */
export function evidenceSummary(a: AccountingRecord | null): string {
  if (!a) return '-';
  const base = a.basePasses ? ', base passes' : '';
  if (a.mode === 'exit-code-only') return `exit code only${a.vacuous ? ', no tests ran' : ''}${base}`;
  if (!a.counts) return `no report${base}`;
  if (a.vacuous) return `0 tests ran${base}`;
  const gone = a.missing.length + a.skippedNow.length;
  return `${a.counts.passed} passed, ${a.counts.failed} failed${gone ? `, ${gone} base test(s) missing or skipped` : ''}${base}`;
}
