// The demo's example repository: a tiny library with one bug and a test that catches it, a
// scripted agent (a real program that calls the model through the sandbox), and two tasks.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

function taskText(title: string): string {
  return `# Task: ${title}

## Goal
\`add(a, b)\` in calc.js returns the sum of its arguments.

## How to check
\`node test/calc.test.js\`

## Done when
- [ ] the test passes
`;
}

export const FILES: Record<string, string> = {
  'calc.js': `// A tiny library with a bug: add() subtracts.
export function add(a, b) {
  return a - b;
}

export function mul(a, b) {
  return a * b;
}
`,
  'test/calc.test.js': `import assert from 'node:assert/strict';
import { add, mul } from '../calc.js';

assert.equal(add(2, 3), 5, 'add(2, 3) should be 5');
assert.equal(add(-1, 1), 0, 'add(-1, 1) should be 0');
assert.equal(mul(4, 5), 20, 'mul(4, 5) should be 20');
console.log('all tests passed');
`,
  'package.json': `${JSON.stringify({ name: 'loopbox-demo', private: true, type: 'module', scripts: { test: 'node test/calc.test.js' } }, null, 2)}\n`,
  'AGENTS.md': `# AGENTS.md
Test command: \`node test/calc.test.js\`. Do not edit tests (they are protected).
Definition of done: the test command passes.
`,
  'tasks/fix-add.md': taskText('fix add()'),
  'tasks/opencode-add.md': taskText('fix add() with OpenCode'),
  // A scripted stand-in for a coding agent, run by the \`command\` adapter inside the sandbox:
  // it asks the model (through the sentry) each iteration, makes a naive change first, reads
  // the harness's feedback, then makes the right one.
  'tools/scripted-agent.mjs': `import fs from 'node:fs';

const model = process.env.LOOPBOX_MODEL_URL;
const iteration = Number(process.env.LOOPBOX_ITERATION);
const feedback = fs.readFileSync(process.env.LOOPBOX_FEEDBACK_FILE, 'utf8');
const notesFile = process.env.LOOPBOX_NOTES_DIR + '/progress.md';

const res = await fetch(model + '/chat/completions', {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ messages: [{ role: 'user', content: 'How do I fix add() in calc.js?' }], max_tokens: 16 }),
});
const body = await res.json();
console.log('model answered HTTP ' + res.status + ', ' + body.usage.total_tokens + ' tokens');

let source = fs.readFileSync('calc.js', 'utf8');
if (!/failed/.test(feedback)) {
  console.log('iteration ' + iteration + ': trying the obvious swap of operands');
  source = source.replace('return a - b;', 'return b - a;');
} else {
  console.log('iteration ' + iteration + ': verification failed last time; the operator is wrong, not the order');
  source = source.replace(/return [ab] - [ab];/, 'return a + b;');
}
fs.writeFileSync('calc.js', source);
fs.appendFileSync(notesFile, '- iteration ' + iteration + ': edited calc.js\\n');
`,
};

/** Creates the example repository (a fresh git repo with one commit) at `dir`. */
export async function createExampleRepo(dir: string): Promise<void> {
  for (const [name, content] of Object.entries(FILES)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), content);
  }
  const git = (...args: string[]) =>
    execa('git', ['-c', 'user.name=loopbox demo', '-c', 'user.email=demo@localhost', '-c', 'commit.gpgsign=false', '-c', 'core.hooksPath=/dev/null', ...args], { cwd: dir });
  await git('init', '-q', '-b', 'main');
  await git('add', '-A');
  await git('commit', '-q', '-m', 'Example project with a bug in add()');
}
