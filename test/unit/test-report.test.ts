import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { directoryTar, singleFileFromTar } from '../../src/verify/collect.js';
import { REPORT_PRESETS, REPORT_PRESET_NAMES } from '../../src/verify/presets.js';
import { ReportParseError, countTests, parseGoJson, parseJUnit, parseReport, parseTap } from '../../src/verify/report.js';

const fixture = (name: string): string => readFileSync(path.join(import.meta.dirname, '..', 'fixtures', 'reports', name), 'utf8');
const byId = (tests: Array<{ id: string; status: string }>): Record<string, string> => Object.fromEntries(tests.map((t) => [t.id, t.status]));

describe('test reports', () => {
  it('node:test TAP: leaves with suite paths, skip and todo as skipped, an exited file as one test', () => {
    const r = parseTap(fixture('node20-mixed.tap'));
    expect(byId(r.tests)).toEqual({
      adds: 'passed',
      'suite > inner ok': 'passed',
      'suite > inner skip': 'skipped',
      'suite > inner todo': 'skipped',
      fails: 'failed',
      '/tmp/acc-samples/n/test/b.test.js': 'passed',
    });
    expect(r.bailedOut).toBe(false);
  });

  it('node:test JUnit gives the same tests as its TAP', () => {
    const tap = byId(parseTap(fixture('node20-mixed.tap')).tests);
    const junit = byId(parseJUnit(fixture('node20-mixed.junit.xml')).tests);
    // node's junit reporter puts classname="test" on every case.
    expect(Object.fromEntries(Object.entries(junit).map(([k, v]) => [k.replace(/(^| > )test > /, '$1'), v]))).toEqual(tap);
  });

  it('pytest JUnit: class and module paths, parametrized cases, skips and failures', () => {
    const r = parseJUnit(fixture('pytest-mixed.junit.xml'));
    expect(byId(r.tests)).toEqual({
      'pytest > tests.test_calc > test_add': 'passed',
      'pytest > tests.test_calc.TestK > test_m': 'failed',
      'pytest > tests.test_calc > test_s': 'skipped',
      'pytest > tests.test_calc > test_p[1]': 'passed',
      'pytest > tests.test_calc > test_p[2]': 'passed',
    });
    expect(countTests(r)).toEqual({ total: 5, passed: 3, failed: 1, skipped: 1 });
  });

  it('vitest JUnit: entities decoded, a failure message that looks like XML stays text', () => {
    expect(byId(parseJUnit(fixture('vitest-mixed.junit.xml')).tests)).toEqual({
      'a.test.mjs > calc > adds': 'passed',
      'a.test.mjs > calc > sk': 'skipped',
      'a.test.mjs > calc > bad': 'failed',
      'a.test.mjs > top': 'passed',
    });
    const tricky = '<testsuite name="s"><testcase name="t"><system-out>&lt;testcase name="fake"/&gt;<![CDATA[<testcase name="cdata"/>]]></system-out></testcase></testsuite>';
    expect(byId(parseJUnit(tricky).tests)).toEqual({ 's > t': 'passed' });
  });

  it('empty runs parse to zero tests', () => {
    expect(parseTap(fixture('node20-empty.tap')).tests).toEqual([]);
    expect(parseJUnit(fixture('pytest-empty.junit.xml')).tests).toEqual([]);
  });

  it('refuses a DOCTYPE, text that is no report, and an oversized report', () => {
    expect(() => parseJUnit('<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuite><testcase name="&a;"/></testsuite>')).toThrow(ReportParseError);
    expect(() => parseJUnit('all tests passed')).toThrow(/not a JUnit report/);
    expect(() => parseTap('all tests passed')).toThrow(/not a TAP report/);
    expect(() => parseGoJson('ok  	example.com/x	0.1s')).toThrow(/no JSON event lines/);
    expect(() => parseReport('tap', `TAP version 13\n${'x'.repeat(16 * 1024 * 1024)}`)).toThrow(/larger than/);
  });

  it('TAP: Bail out!, escaped hashes, a failed parent whose children passed, Node 18 file nesting', () => {
    const text = [
      'TAP version 13',
      '# Subtest: /w/test/a.test.js',
      '    # Subtest: adds \\# one',
      '    ok 1 - adds \\# one',
      '    # Subtest: hook',
      '    ok 2 - hook # SKIP not today',
      '    1..2',
      'not ok 1 - /w/test/a.test.js',
      'Bail out! boom',
    ].join('\n');
    const r = parseTap(text);
    expect(byId(r.tests)).toEqual({ '/w/test/a.test.js > adds # one': 'passed', '/w/test/a.test.js > hook': 'skipped', '/w/test/a.test.js': 'failed' });
    expect(r.bailedOut).toBe(true);
  });

  it('go test -json: subtests are the tests, a package that failed to build is a failed test', () => {
    const lines = [
      { Action: 'run', Package: 'ex/calc', Test: 'TestAdd' },
      { Action: 'pass', Package: 'ex/calc', Test: 'TestAdd/small' },
      { Action: 'fail', Package: 'ex/calc', Test: 'TestAdd/big' },
      { Action: 'fail', Package: 'ex/calc', Test: 'TestAdd' },
      { Action: 'skip', Package: 'ex/calc', Test: 'TestMul' },
      { Action: 'fail', Package: 'ex/calc' },
      { Action: 'fail', Package: 'ex/broken' },
    ].map((l) => JSON.stringify(l));
    expect(byId(parseGoJson(['# ex/broken', ...lines, 'FAIL'].join('\n')).tests)).toEqual({
      'ex/calc > TestAdd/small': 'passed',
      'ex/calc > TestAdd/big': 'failed',
      'ex/calc > TestMul': 'skipped',
      'ex/broken (package)': 'failed',
    });
  });

  it('duplicate names stay apart in report order', () => {
    expect(parseReport('tap', 'ok 1 - same\nnot ok 2 - same\n').tests).toEqual([
      { id: 'same', status: 'passed' },
      { id: 'same #2', status: 'failed' },
    ]);
  });

  it('reads the one regular file of an archive and refuses anything else', () => {
    const dir = directoryTar('loopbox-report', 1000);
    expect(dir.length).toBe(1536);
    expect(() => singleFileFromTar(Buffer.from(dir))).toThrow(/not a regular file/);
    const file = Buffer.from(dir);
    file.write('0', 156, 'latin1');
    file.write('00000000005\0', 124, 'latin1');
    Buffer.from('hello').copy(file, 512);
    expect(singleFileFromTar(file).toString()).toBe('hello');
  });
});

describe('verify.report config', () => {
  it('accepts every preset by name and an explicit format and path', () => {
    for (const name of REPORT_PRESET_NAMES) {
      expect(parseConfig({ verify: { report: name } }).verify.report).toMatchObject({ format: REPORT_PRESETS[name].format, path: REPORT_PRESETS[name].path });
    }
    expect(parseConfig({ verify: { report: { format: 'junit', path: 'out/junit.xml' } } }).verify.report).toEqual({ format: 'junit', path: 'out/junit.xml' });
    expect(parseConfig({}).verify.report).toBeUndefined();
  });

  it('names the key when the preset or the format is unknown', () => {
    expect(() => parseConfig({ verify: { report: 'mocha' } })).toThrow(/verify\.report: expected a preset \(node-test, vitest, jest, pytest, go-test, cargo\)/);
    expect(() => parseConfig({ verify: { report: { format: 'xunit', path: 'x' } } })).toThrow(/verify\.report: expected a preset \(node-test, vitest, jest, pytest, go-test, cargo\)/);
    expect(() => parseConfig({ verify: { report: { format: 'tap' } } })).toThrow(/verify\.report: expected a preset \(node-test, vitest, jest, pytest, go-test, cargo\)/);
  });
});
