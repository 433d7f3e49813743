// The runner image carries loopbox's production dependencies only, found the way Node resolves
// them from package.json (no registry, no dev tools in the image).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { productionPackages } from '../../src/images/runner-context.js';

const root = path.resolve(import.meta.dirname, '..', '..');

describe('the runner image\'s node_modules', () => {
  it('holds every production dependency and their dependencies, and no dev dependency', async () => {
    const names = (await productionPackages(root)).map((d) => path.relative(path.join(root, 'node_modules'), d));
    for (const dep of ['commander', 'dockerode', 'execa', 'zod', 'yaml', 'tar-fs', 'docker-modem', 'ssh2']) expect(names).toContain(dep);
    for (const dev of ['typescript', 'vitest', 'eslint', 'dependency-cruiser', 'kubernetes-models', 'playwright-core']) expect(names).not.toContain(dev);
    expect(names.every((n) => !n.includes(`${path.sep}node_modules${path.sep}`))).toBe(true);
  });
});
