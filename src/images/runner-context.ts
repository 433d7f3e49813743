// The runner image's extra build context: this machine's Node binary and loopbox's dist with its
// production dependencies only (walked from package.json, never the dev tools), all copied from
// disk: building the runner needs no npm registry.
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ImageBuildError } from '../common/errors.js';
import { packageRoot } from '../common/paths.js';

interface PackageJson {
  name?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

/** Writes `node` and `app/` (dist, package.json, node_modules) into `context`. */
export async function addRunnerContext(context: string, root = packageRoot()): Promise<void> {
  const dist = path.join(root, 'dist', 'cli', 'main.js');
  if (!existsSync(dist)) {
    throw new ImageBuildError('runner', `loopbox's dist is missing (${dist})`, '', { hint: 'Run `npm run build` first: the runner image carries the built CLI.' });
  }
  await cp(process.execPath, path.join(context, 'node'));
  const app = path.join(context, 'app');
  await mkdir(app, { recursive: true });
  await cp(path.join(root, 'dist'), path.join(app, 'dist'), { recursive: true });
  await cp(path.join(root, 'package.json'), path.join(app, 'package.json'));
  for (const dir of await productionPackages(root)) {
    await cp(dir, path.join(app, 'node_modules', path.relative(path.join(root, 'node_modules'), dir)), { recursive: true, dereference: true });
  }
}

/**
 * The top-level `node_modules/<name>` folders the production dependencies resolve to, found the
 * way Node resolves them (a package's own node_modules first, then upwards). Nested copies are
 * inside their parent's folder and come with it.
 */
export async function productionPackages(root: string): Promise<string[]> {
  const top = path.join(root, 'node_modules');
  const found = new Set<string>();
  const seen = new Set<string>();
  const visit = async (fromDir: string, pkg: PackageJson): Promise<void> => {
    const deps = { ...pkg.dependencies, ...pkg.optionalDependencies };
    for (const name of Object.keys(deps)) {
      const dir = resolvePackageDir(fromDir, name, root);
      if (!dir) {
        if (pkg.optionalDependencies?.[name]) continue;
        throw new ImageBuildError('runner', `the production dependency ${name} (of ${pkg.name ?? 'loopbox'}) is not installed`, '', { hint: 'Run `npm ci` in the loopbox checkout.' });
      }
      if (seen.has(dir)) continue;
      seen.add(dir);
      const rel = path.relative(top, dir);
      if (!rel.startsWith('..') && !rel.includes(`${path.sep}node_modules${path.sep}`)) found.add(dir);
      const child = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
      await visit(dir, child);
    }
  };
  await visit(root, JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as PackageJson);
  return [...found].sort();
}

function resolvePackageDir(fromDir: string, name: string, root: string): string | undefined {
  let dir = fromDir;
  for (;;) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === root || path.dirname(dir) === dir) return undefined;
    dir = path.dirname(dir);
  }
}
