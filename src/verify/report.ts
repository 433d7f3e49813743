// Test reports (JUnit XML, TAP, `go test -json`) parsed on the host, never inside the verify
// container: the report is hostile input written by a process that ran the agent's code, so the
// parsers are small, bounded, expand no XML entities beyond the five predefined ones and refuse
// a DOCTYPE. They return which tests ran and how each ended, and nothing else.

export type ReportFormat = 'junit' | 'tap' | 'go-json';
export const REPORT_FORMATS: readonly ReportFormat[] = ['junit', 'tap', 'go-json'];

export type TestStatus = 'passed' | 'failed' | 'skipped';

export interface TestCase {
  /** Stable identity across runs: suite / class / test names joined by " > ". */
  id: string;
  status: TestStatus;
}

export interface TestReport {
  format: ReportFormat;
  tests: TestCase[];
  /** The runner gave up part-way (TAP "Bail out!"). */
  bailedOut: boolean;
}

export interface ReportCounts {
  total: number;
  passed: number;
  failed: number;
  skipped: number;
}

/** Largest report the host reads; bigger ones are rejected, not truncated. */
export const MAX_REPORT_BYTES = 16 * 1024 * 1024;
/** Most test cases one report may hold. */
export const MAX_REPORT_TESTS = 200_000;

export class ReportParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = this.constructor.name;
  }
}

export function countTests(report: TestReport): ReportCounts {
  const counts = { total: report.tests.length, passed: 0, failed: 0, skipped: 0 };
  for (const t of report.tests) counts[t.status] += 1;
  return counts;
}

export function parseReport(format: ReportFormat, text: string): TestReport {
  if (text.length > MAX_REPORT_BYTES) throw new ReportParseError(`report is larger than ${MAX_REPORT_BYTES} bytes`);
  const report = format === 'junit' ? parseJUnit(text) : format === 'tap' ? parseTap(text) : parseGoJson(text);
  if (report.tests.length > MAX_REPORT_TESTS) throw new ReportParseError(`report lists more than ${MAX_REPORT_TESTS} tests`);
  return { ...report, tests: uniqueIds(report.tests) };
}

/** Two tests with one name (node:test flattens files) stay apart as "name", "name #2", ... in report order. */
function uniqueIds(tests: TestCase[]): TestCase[] {
  const seen = new Map<string, number>();
  return tests.map((t) => {
    const n = (seen.get(t.id) ?? 0) + 1;
    seen.set(t.id, n);
    return n === 1 ? t : { ...t, id: `${t.id} #${n}` };
  });
}

// ---------------------------------------------------------------------------------------------
// JUnit XML (node:test's junit reporter, pytest --junitxml, vitest, jest-junit, cargo-nextest).

const XML_ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeXml(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-z]{2,4});/g, (whole, ref: string) => {
    if (ref.startsWith('#x')) return safeCodePoint(parseInt(ref.slice(2), 16), whole);
    if (ref.startsWith('#')) return safeCodePoint(parseInt(ref.slice(1), 10), whole);
    return XML_ENTITIES[ref] ?? whole;
  });
}

function safeCodePoint(cp: number, fallback: string): string {
  return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : fallback;
}

function attributes(source: string): Map<string, string> {
  const attrs = new Map<string, string>();
  const re = /([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*("([^"]*)"|'([^']*)')/g;
  for (let m = re.exec(source); m; m = re.exec(source)) attrs.set(m[1]!, decodeXml(m[3] ?? m[4] ?? ''));
  return attrs;
}

export function parseJUnit(xml: string): TestReport {
  if (/<!DOCTYPE/i.test(xml)) throw new ReportParseError('JUnit report has a DOCTYPE (refused: no entity expansion)');
  if (!/<(testsuites|testsuite|testcase)\b/.test(xml)) throw new ReportParseError('not a JUnit report: no <testsuites>, <testsuite> or <testcase> element');
  // Text content and comments are dropped first so that a failure message cannot look like a tag.
  const stripped = xml
    .replace(/<!--[\s\S]*?-->/g, '')
    .replace(/<!\[CDATA\[[\s\S]*?\]\]>/g, '')
    .replace(/<\?[\s\S]*?\?>/g, '');
  const suites: string[] = [];
  const suiteIsOpen: boolean[] = [];
  const tests: TestCase[] = [];
  let current: { id: string; status: TestStatus } | undefined;
  const tag = /<(\/?)([A-Za-z_][-A-Za-z0-9_:.]*)((?:[^>"']|"[^"]*"|'[^']*')*?)(\/?)>/g;
  for (let m = tag.exec(stripped); m; m = tag.exec(stripped)) {
    const [, closing, name, attrText, selfClosing] = m;
    if (closing) {
      if (name === 'testsuite' || name === 'testsuites') {
        suites.pop();
        suiteIsOpen.pop();
      } else if (name === 'testcase' && current) {
        tests.push(current);
        current = undefined;
      }
      continue;
    }
    const attrs = attributes(attrText ?? '');
    if (name === 'testsuites' || name === 'testsuite') {
      if (selfClosing) continue;
      // The root <testsuites> name ("pytest tests", "vitest tests") is the tool's, not a suite's.
      suites.push(name === 'testsuite' ? (attrs.get('name') ?? '') : '');
      suiteIsOpen.push(true);
    } else if (name === 'testcase') {
      if (current) tests.push(current); // an unclosed testcase ends where the next begins
      const parts = suites.filter(Boolean);
      const classname = attrs.get('classname');
      if (classname && classname !== parts.at(-1)) parts.push(classname);
      parts.push(attrs.get('name') ?? '');
      current = { id: parts.join(' > '), status: 'passed' };
      if (selfClosing) {
        tests.push(current);
        current = undefined;
      }
    } else if (current && (name === 'failure' || name === 'error')) {
      current.status = 'failed';
    } else if (current && name === 'skipped' && current.status !== 'failed') {
      current.status = 'skipped';
    }
  }
  if (current) tests.push(current);
  return { format: 'junit', tests, bailedOut: false };
}

// ---------------------------------------------------------------------------------------------
// TAP 13/14 with indented subtests (node:test's tap reporter; tap, pytest-tap...). Leaves are the
// tests: a point with nested points (a suite, or a file in Node 18) is not counted itself.

interface TapPoint {
  indent: number;
  name: string;
  status: TestStatus;
  children: TapPoint[];
}

export function parseTap(text: string): TestReport {
  const lines = text.split(/\r?\n/);
  if (!lines.some((l) => /^\s*(TAP version \d+|1\.\.\d+|(not )?ok\b)/.test(l))) throw new ReportParseError('not a TAP report: no version, plan or test line');
  let pending: TapPoint[] = [];
  let yamlIndent: number | undefined;
  let bailedOut = false;
  for (const line of lines) {
    const indent = line.length - line.trimStart().length;
    const body = line.trimStart();
    if (yamlIndent !== undefined) {
      if (indent >= yamlIndent && body === '...') yamlIndent = undefined;
      else if (indent < yamlIndent && body !== '') yamlIndent = undefined; // an unterminated block
      else continue;
    }
    if (body === '---') {
      yamlIndent = indent;
      continue;
    }
    if (/^Bail out!/.test(body)) {
      bailedOut = true;
      continue;
    }
    const m = /^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?(.*)$/.exec(body);
    if (!m) continue;
    const { name, directive } = splitDirective(m[3] ?? '');
    let status: TestStatus = m[1] === 'ok' ? 'passed' : 'failed';
    if (directive === 'skip' || directive === 'todo') status = 'skipped';
    // Points printed since the last point at this depth or shallower, deeper than this one,
    // are its subtests (TAP prints children before their parent's result line).
    const children = pending.filter((p) => p.indent > indent);
    pending = pending.filter((p) => p.indent <= indent);
    pending.push({ indent, name, status, children });
  }
  const tests: TestCase[] = [];
  const walk = (point: TapPoint, prefix: string[]): void => {
    const path = [...prefix, point.name];
    if (!point.children.length) tests.push({ id: path.join(' > '), status: point.status });
    else {
      for (const child of point.children) walk(child, path);
      // A parent that failed with all its children passing (a hook, an uncaught error) is a failure.
      if (point.status === 'failed' && point.children.every((c) => c.status !== 'failed')) tests.push({ id: path.join(' > '), status: 'failed' });
    }
  };
  for (const p of pending) walk(p, []);
  return { format: 'tap', tests, bailedOut };
}

/** "name # SKIP reason" → name and directive; `\#` is an escaped hash inside the name. */
function splitDirective(description: string): { name: string; directive?: 'skip' | 'todo' } {
  let i = 0;
  for (; i < description.length; i += 1) {
    if (description[i] === '\\') i += 1;
    else if (description[i] === '#') break;
  }
  const name = description.slice(0, i).trim().replace(/\\(.)/g, '$1');
  const rest = description.slice(i + 1).trim();
  const d = /^(skip|todo)\b/i.exec(rest)?.[1]?.toLowerCase();
  return d === 'skip' || d === 'todo' ? { name, directive: d } : { name };
}

// ---------------------------------------------------------------------------------------------
// `go test -json` (test2json events, one JSON object a line). Subtests are "Parent/child".

export function parseGoJson(text: string): TestReport {
  const results = new Map<string, TestStatus>();
  const failedPackages: string[] = [];
  let events = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    let event: { Action?: unknown; Package?: unknown; Test?: unknown };
    try {
      event = JSON.parse(line) as typeof event;
    } catch {
      continue; // go test interleaves build output; a broken line is not an event
    }
    events += 1;
    const action = typeof event.Action === 'string' ? event.Action : '';
    const pkg = typeof event.Package === 'string' ? event.Package : '';
    const test = typeof event.Test === 'string' ? event.Test : undefined;
    if (action !== 'pass' && action !== 'fail' && action !== 'skip') continue;
    if (test === undefined) {
      if (action === 'fail') failedPackages.push(pkg);
      continue;
    }
    results.set(`${pkg} > ${test}`, action === 'pass' ? 'passed' : action === 'fail' ? 'failed' : 'skipped');
  }
  if (!events) throw new ReportParseError('not a `go test -json` report: no JSON event lines');
  const ids = [...results.keys()];
  const tests: TestCase[] = [];
  for (const [id, status] of results) {
    // A parent whose subtests are listed is not a test of its own.
    if (ids.some((other) => other.startsWith(`${id}/`))) continue;
    tests.push({ id, status });
  }
  // A package that failed without a failing test (build error, panic in init) is one failed test.
  for (const pkg of failedPackages) if (!tests.some((t) => t.id.startsWith(`${pkg} > `) && t.status === 'failed')) tests.push({ id: `${pkg} (package)`, status: 'failed' });
  return { format: 'go-json', tests, bailedOut: false };
}
