// `loopbox init`: a commented loopbox.yaml, an AGENTS.md skill file and a task template.
// It looks at the repository for a test setup it knows (package.json with a test script,
// pytest, go.mod, Cargo.toml) and proposes that verify command, with an image that can run it.
// Never overwrites an existing file unless `force`.
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../common/errors.js';
import { TOOLCHAINS, type Toolchain, imageRef, toolchainImage } from '../images/catalog.js';
import { REPORT_PRESETS, type ReportPresetName } from '../verify/presets.js';

/**
 * What `init` writes for each toolchain it detects. One row per toolchain, so that a setting
 * that depends on the test runner (a test-report format, say) goes next to the command.
 * `image` is built by `loopbox images build --toolchain <toolchain>`.
 */
export interface VerifyProfile {
  command: string[];
  /** What the verify command reads besides the code: the agent may not change it. */
  protectedPaths: string[];
  /** The `verify.report` preset the command writes (test accounting); none: exit code only. */
  report?: ReportPresetName;
}

export const VERIFY_PROFILES: Record<Toolchain, VerifyProfile> = {
  // package.json is protected: its "test" script is the verify command's real content.
  node: { command: ['npm', 'test'], protectedPaths: ['test/**', 'package.json', 'package-lock.json'] },
  // pytest reads its options (addopts, testpaths) from these files.
  python: { command: [...REPORT_PRESETS.pytest.command, '-q'], report: 'pytest', protectedPaths: ['tests/**', 'test/**', 'conftest.py', 'pytest.ini', 'pyproject.toml', 'setup.cfg', 'tox.ini'] },
  go: { command: ['go', 'test', './...'], protectedPaths: ['**/*_test.go', 'go.mod', 'go.sum'] },
  rust: { command: ['cargo', 'test', '--offline'], protectedPaths: ['tests/**', 'Cargo.toml', 'Cargo.lock'] },
};

/** The verify image for a toolchain: `loopbox/verify-<toolchain>:<tag>`. */
export function verifyImageFor(toolchain: Toolchain): string {
  return imageRef(toolchainImage(toolchain));
}

export interface Detected {
  toolchain: Toolchain;
  /** Why, in words: `package.json has a "test" script`. */
  evidence: string;
}

/** npm init's placeholder: a package.json with it has no tests to run. */
const NPM_PLACEHOLDER_TEST = /no test specified/;

/** The toolchains whose test setup `dir` shows, in the order of TOOLCHAINS. */
export async function detectToolchains(dir: string): Promise<Detected[]> {
  const found: Detected[] = [];
  for (const toolchain of TOOLCHAINS) {
    const evidence = await evidenceFor(dir, toolchain);
    if (evidence) found.push({ toolchain, evidence });
  }
  return found;
}

async function evidenceFor(dir: string, toolchain: Toolchain): Promise<string | undefined> {
  switch (toolchain) {
    case 'node': {
      let pkg: unknown;
      try {
        pkg = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8'));
      } catch {
        return undefined;
      }
      const scripts = typeof pkg === 'object' && pkg !== null ? (pkg as { scripts?: unknown }).scripts : undefined;
      const test = typeof scripts === 'object' && scripts !== null ? (scripts as { test?: unknown }).test : undefined;
      return typeof test === 'string' && test.trim() && !NPM_PLACEHOLDER_TEST.test(test) ? 'package.json has a "test" script' : undefined;
    }
    case 'python':
      for (const file of ['pytest.ini', 'pyproject.toml']) if (await exists(path.join(dir, file))) return `${file} found (pytest)`;
      return undefined;
    case 'go':
      return (await exists(path.join(dir, 'go.mod'))) ? 'go.mod found' : undefined;
    case 'rust':
      return (await exists(path.join(dir, 'Cargo.toml'))) ? 'Cargo.toml found' : undefined;
  }
}

/** The template's verify command and report lines, which `configTemplate` replaces for a detected toolchain. */
const TEMPLATE_COMMAND_LINE = `  command: ${JSON.stringify(REPORT_PRESETS['node-test'].command).replaceAll('","', '", "')}
  # Test accounting: the harness reads the runner's report, so an early exit(0), a skipped test
  # or a run of zero tests is not a pass. Presets: node-test, vitest, jest, pytest, go-test, cargo.
  report: node-test
`;

/**
 * The lines that stand for `command:` in the template's `verify:` section when a toolchain was
 * detected: its command and the image that can run it. Only that line is replaced, so other
 * `verify:` keys of the template (timeout, and whatever is added there) stay as written.
 */
function verifyLines(detected: Detected): string {
  const profile = VERIFY_PROFILES[detected.toolchain];
  return `  # Proposed by \`loopbox init\`: ${detected.evidence}.
  command: ${JSON.stringify(profile.command).replaceAll(',', ', ')}
${profile.report ? `  report: ${profile.report}        # test accounting: the harness reads the runner's report\n` : '  # No test report for this runner: verified rests on the exit code (see verify.report).\n'}  # The agent image has no npm, Python, Go or Rust: this one adds ${detected.toolchain} (Debian packages).
  # Build it with: loopbox images build --toolchain ${detected.toolchain}
  image: ${verifyImageFor(detected.toolchain)}
`;
}

export function configTemplate(detected?: Detected): string {
  if (!detected) return CONFIG_TEMPLATE;
  if (!CONFIG_TEMPLATE.includes(TEMPLATE_COMMAND_LINE)) throw new Error('CONFIG_TEMPLATE lost its verify command line');
  const protectedPaths = VERIFY_PROFILES[detected.toolchain].protectedPaths;
  return CONFIG_TEMPLATE.replace(TEMPLATE_COMMAND_LINE, verifyLines(detected)).replace(
    /^protectedPaths:\n(?: {2}- .*\n)+/m,
    `protectedPaths:\n${protectedPaths.map((p) => `  - ${JSON.stringify(p)}`).join('\n')}\n`,
  );
}

export function agentsTemplate(detected?: Detected): string {
  const command = detected ? VERIFY_PROFILES[detected.toolchain].command.join(' ') : 'node --test';
  return AGENTS_TEMPLATE.replace('`node --test`', `\`${command}\``);
}

export const CONFIG_TEMPLATE = `# loopbox.yaml: every key is optional; docs/configuration.md lists them with their defaults.

model:
  # A GGUF file on this machine, served by a managed llama-server (\`loopbox model up\`).
  # gguf: ~/models/qwen3-coder-30b-a3b-q4_k_m.gguf
  # Or an OpenAI-compatible server you already run (the sandbox may reach exactly its ip:port):
  # endpoint: http://192.168.1.20:8080/v1
  name: local
  ctxSize: 65536       # split between slots: OpenCode's first prompt alone is ~30k tokens
  parallel: 1          # model slots = loops that can run at once
  gpus: auto           # auto | all | none | ["0", "1"]

agent:
  type: opencode       # opencode | command
  # command: ["bash", "-lc", "my-agent --task \\"$LOOPBOX_TASK_FILE\\""]
  timeout: 20m         # per iteration; a stuck agent is killed and the loop goes on

verify:
  # Runs in a clean container with no network, from this file only (never from the worktree).
  # The verify image (default: the agent image: git, bash, Node 18; no npm, Python, Go or Rust)
  # must hold your toolchain, and the repository your dependencies. \`loopbox images build
  # --toolchain node|python|go|rust\` builds one; set verify.image to it.
  command: ["node", "--test", "--test-reporter=tap", "--test-reporter-destination=/loopbox-report/node-test.tap", "--test-reporter=spec", "--test-reporter-destination=stdout"]
  # Test accounting: the harness reads the runner's report, so an early exit(0), a skipped test
  # or a run of zero tests is not a pass. Presets: node-test, vitest, jest, pytest, go-test, cargo.
  report: node-test
  timeout: 10m

loop:
  maxIterations: 10
  noProgress: 2        # stop when the worktree is unchanged this many iterations in a row
  # budget: 2h         # wall-clock budget per task
  # tokenBudget: 2000000

# The agent may not change these (reverted and reported to it); list what your verify reads.
protectedPaths:
  - "test/**"

sandbox:
  memory: 4g
  cpus: 2
  pids: 512
  allow: []            # extra host:port endpoints the agent may reach (none by default)

tasks:
  - "tasks/*.md"
`;

export const AGENTS_TEMPLATE = `# AGENTS.md: how to work in this repository

## Test command
\`node --test\` (the loop runs it after every iteration, in a clean container; you cannot skip it)

## Conventions
- Keep changes small and focused on the task.
- Do not edit tests to make them pass; test files are protected and edits are reverted.
- Write what you tried and what is left in /loopbox/notes/progress.md.

## Definition of done
The test command passes. The harness decides this, not you.
`;

export const TASK_TEMPLATE = `# Task: <one line>

## Goal
What should be true when this is done.

## How to check
The command or test that shows it (the loop's verify command must cover it).

## Done when
- [ ] the verify command passes
- [ ] no unrelated files changed
`;

export interface InitResult {
  written: string[];
  skipped: string[];
  /** The toolchain whose verify command was written, if one was detected or chosen. */
  detected?: Detected | undefined;
  /** Every toolchain the repository shows (more than one: the first is used). */
  found: Detected[];
}

export async function initProject(dir: string, options: { force?: boolean; toolchain?: Toolchain } = {}): Promise<InitResult> {
  const found = await detectToolchains(dir);
  const detected = options.toolchain ? (found.find((d) => d.toolchain === options.toolchain) ?? { toolchain: options.toolchain, evidence: '--toolchain' }) : found[0];
  const files: Array<[string, string]> = [
    ['loopbox.yaml', configTemplate(detected)],
    ['AGENTS.md', agentsTemplate(detected)],
    [path.join('tasks', 'example.md'), TASK_TEMPLATE],
  ];
  const existing: string[] = [];
  for (const [name] of files) {
    if (await exists(path.join(dir, name))) existing.push(name);
  }
  if (existing.length && !options.force) {
    throw new ConfigError(`Not overwriting existing file(s): ${existing.join(', ')}.`, [], { hint: 'Pass --force to overwrite them.' });
  }
  await mkdir(path.join(dir, 'tasks'), { recursive: true });
  const written: string[] = [];
  for (const [name, content] of files) {
    await writeFile(path.join(dir, name), content);
    written.push(name);
  }
  return { written, skipped: [], detected, found };
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
