// Which task files a `loopbox run` without arguments uses: the config's globs, relative to the repo.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { matchesAny } from '../git/index.js';

export async function resolveTaskFiles(repo: string, patterns: string[]): Promise<string[]> {
  const out = new Set<string>();
  for (const pattern of patterns) {
    // Walk only from the fixed part of the pattern (`tasks/*.md` → `tasks/`).
    const fixed = pattern.split('/').filter((_, i, parts) => !/[*?[{]/.test(parts.slice(0, i + 1).join('/')));
    const base = path.join(repo, ...fixed);
    for (const file of await walk(base)) {
      const rel = path.relative(repo, file).split(path.sep).join('/');
      if (matchesAny(rel, [pattern])) out.add(file);
    }
  }
  return [...out].sort();
}

async function walk(dir: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const files: string[] = [];
  for (const e of entries) {
    if (e.name === '.git' || e.name === 'node_modules' || e.name === '.loopbox') continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) files.push(...(await walk(full)));
    else if (e.isFile()) files.push(full);
  }
  return files;
}
