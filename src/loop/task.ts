import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, describe } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';

export interface Task {
  /** From the file name: `tasks/fix-login.md` → `fix-login`; names the branch `loopbox/<name>`. */
  name: string;
  file: string;
  text: string;
}

/**
 * Reads and checks a task file. `from` says how the CLI got the path (the argument as typed and
 * the --repo it was resolved against), so that a missing file's error can say what was tried.
 */
export async function loadTask(file: string, from?: { given: string; repo: string }): Promise<Task> {
  const resolved = path.resolve(file);
  const name = path.basename(resolved).replace(/\.(md|txt)$/i, '').toLowerCase();
  if (!isSafeName(name)) {
    throw new ConfigError(`Task file name ${JSON.stringify(path.basename(resolved))} does not make a safe task name.`, [], {
      hint: 'Use lowercase letters, digits, ".", "_" or "-" (it names the branch loopbox/<task>).',
    });
  }
  let text: string;
  try {
    text = await readFile(resolved, 'utf8');
  } catch (error) {
    throw new ConfigError(`Cannot read task file ${resolved}: ${describe(error)}`, [], { hint: taskPathHint(resolved, from) });
  }
  if (!text.trim()) throw new ConfigError(`Task file ${resolved} is empty.`, [], { hint: 'Describe the Goal, How to check, and Done when.' });
  return { name, file: resolved, text };
}

function taskPathHint(resolved: string, from: { given: string; repo: string } | undefined): string {
  if (!from || path.isAbsolute(from.given)) return 'Check the path; `loopbox init` writes tasks/example.md.';
  const inCwd = path.resolve(from.given);
  const tried = `A relative task path is resolved against --repo (${path.resolve(from.repo)}), like git -C`;
  return inCwd !== resolved && existsSync(inCwd) ? `${tried}; to use ${inCwd}, pass it as an absolute path.` : `${tried}; check the path (\`loopbox init\` writes tasks/example.md).`;
}
