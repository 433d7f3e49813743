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

export async function loadTask(file: string): Promise<Task> {
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
    throw new ConfigError(`Cannot read task file ${resolved}: ${describe(error)}`, [], { hint: 'Check the path; `loopbox init` writes tasks/example.md.' });
  }
  if (!text.trim()) throw new ConfigError(`Task file ${resolved} is empty.`, [], { hint: 'Describe the Goal, How to check, and Done when.' });
  return { name, file: resolved, text };
}
