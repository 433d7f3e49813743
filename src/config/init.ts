// `loopbox init`: a commented loopbox.yaml, an AGENTS.md skill file and a task template.
// Never overwrites an existing file unless `force`.
import { access, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../common/errors.js';

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
  # The verify image (default: the agent image: git, bash, Node 18, no npm) must hold your
  # toolchain and the worktree your dependencies; set verify.image for anything else.
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
}

export async function initProject(dir: string, options: { force?: boolean } = {}): Promise<InitResult> {
  const files: Array<[string, string]> = [
    ['loopbox.yaml', CONFIG_TEMPLATE],
    ['AGENTS.md', AGENTS_TEMPLATE],
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
  return { written, skipped: [] };
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
