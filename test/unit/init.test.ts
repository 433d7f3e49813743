import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { initProject } from '../../src/config/init.js';
import { loadConfig } from '../../src/config/load.js';
import { REPORT_PRESETS } from '../../src/verify/presets.js';

describe('loopbox init', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('writes a valid commented config, AGENTS.md and a task template; never overwrites without force', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-init-'));
    dirs.push(dir);
    const res = await initProject(dir);
    expect(res.written).toEqual(['loopbox.yaml', 'AGENTS.md', path.join('tasks', 'example.md')]);
    const { config } = await loadConfig({ dir });
    // Test accounting is on: the command writes the node-test preset's report, and the config names it.
    expect(config.verify.command).toEqual(REPORT_PRESETS['node-test'].command);
    expect(config.verify.report).toMatchObject({ format: 'tap', path: REPORT_PRESETS['node-test'].path });
    expect(await readFile(path.join(dir, 'tasks', 'example.md'), 'utf8')).toMatch(/## Goal[\s\S]*## How to check[\s\S]*## Done when/);
    await writeFile(path.join(dir, 'AGENTS.md'), 'mine');
    await expect(initProject(dir)).rejects.toThrow(/Not overwriting existing file\(s\): loopbox.yaml, AGENTS.md/);
    expect(await readFile(path.join(dir, 'AGENTS.md'), 'utf8')).toBe('mine');
    await initProject(dir, { force: true });
    expect(await readFile(path.join(dir, 'AGENTS.md'), 'utf8')).not.toBe('mine');
  });
});
