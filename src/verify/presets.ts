// Ready `verify.report` settings for common test runners: where the runner writes its report and
// in which format, and the verify command that makes it write there. `verify.report: node-test`
// in loopbox.yaml names one; `loopbox init` writes the command and the preset together.
import type { ReportFormat } from './report.js';

/**
 * The folder in the verify container that reports go to: outside /workspace, so nothing in the
 * worktree can be there before the command starts (loopbox creates it empty, owned by the
 * verify uid, for every run).
 */
export const REPORT_DIR = '/loopbox-report';

export interface ReportSetting {
  format: ReportFormat;
  /** Absolute, or relative to /workspace. */
  path: string;
}

export interface ReportPreset extends ReportSetting {
  /** A verify command that writes the report (argv, no shell unless the runner needs one). */
  command: string[];
  note: string;
}

export const REPORT_PRESETS = {
  // Node 18 (the default image) has no junit reporter: TAP to the report, spec to the log.
  'node-test': {
    format: 'tap',
    path: `${REPORT_DIR}/node-test.tap`,
    command: ['node', '--test', '--test-reporter=tap', `--test-reporter-destination=${REPORT_DIR}/node-test.tap`, '--test-reporter=spec', '--test-reporter-destination=stdout'],
    note: 'node --test (Node 18.15 or later)',
  },
  vitest: {
    format: 'junit',
    path: `${REPORT_DIR}/vitest.xml`,
    command: ['npx', '--no-install', 'vitest', 'run', '--reporter=default', '--reporter=junit', `--outputFile.junit=${REPORT_DIR}/vitest.xml`],
    note: 'vitest run (vitest installed in the worktree)',
  },
  jest: {
    format: 'junit',
    path: `${REPORT_DIR}/jest.xml`,
    command: ['sh', '-c', `JEST_JUNIT_OUTPUT_FILE=${REPORT_DIR}/jest.xml exec npx --no-install jest --ci --reporters=default --reporters=jest-junit`],
    note: 'jest with the jest-junit reporter installed in the worktree',
  },
  pytest: {
    format: 'junit',
    path: `${REPORT_DIR}/pytest.xml`,
    command: ['python3', '-m', 'pytest', '-p', 'no:cacheprovider', `--junitxml=${REPORT_DIR}/pytest.xml`],
    note: 'pytest (any version with --junitxml)',
  },
  // go test has no JUnit or TAP output of its own; its -json events are parsed as they are.
  'go-test': {
    format: 'go-json',
    path: `${REPORT_DIR}/go-test.json`,
    command: ['sh', '-c', `exec go test -json ./... > ${REPORT_DIR}/go-test.json`],
    note: 'go test -json (stdout to the report; the exit code is go test\'s)',
  },
  // Stable cargo test has no machine-readable output; cargo-nextest writes JUnit when its profile
  // says so. The preset passes that profile on the command line, not from the worktree.
  cargo: {
    format: 'junit',
    path: `${REPORT_DIR}/cargo-nextest.xml`,
    command: [
      'sh',
      '-c',
      `printf '[profile.loopbox.junit]\\npath = "junit.xml"\\n' > /tmp/nextest.toml; rm -f target/nextest/loopbox/junit.xml; cargo nextest run --tool-config-file loopbox:/tmp/nextest.toml --profile loopbox; rc=$?; cp target/nextest/loopbox/junit.xml ${REPORT_DIR}/cargo-nextest.xml; exit $rc`,
    ],
    note: 'cargo-nextest installed in the verify image',
  },
} as const satisfies Record<string, ReportPreset>;

export type ReportPresetName = keyof typeof REPORT_PRESETS;
export const REPORT_PRESET_NAMES = Object.keys(REPORT_PRESETS) as ReportPresetName[];
