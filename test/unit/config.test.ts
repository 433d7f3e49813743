import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { parseDuration, parseSize } from '../../src/config/units.js';

describe('config', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('fills every default from an empty file', () => {
    const config = parseConfig({});
    expect(config.sandbox.memory).toBe(4 * 1024 ** 3);
    expect(config.sandbox.pids).toBe(512);
    expect(config.sandbox.allow).toEqual([]);
    expect(config.model.startTimeout).toBe(120_000);
  });

  it('reports every problem at once, with the key path, expectation and what was found', () => {
    let error: unknown;
    try {
      parseConfig({ sandbox: { memry: 1, cpus: 'x', memory: 'lots' }, modle: {} });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const issues = (error as ConfigError).issues;
    expect(issues).toHaveLength(4);
    expect(issues.join('\n')).toContain('sandbox.memry: unknown key');
    expect(issues.join('\n')).toContain('modle: unknown key');
    expect(issues.join('\n')).toMatch(/sandbox\.cpus: expected number.*got "x" \(string\)/);
    expect(issues.join('\n')).toMatch(/sandbox\.memory: expected a size like "512m".*"lots"/);
  });

  it('rejects an allow entry that is not host:port', () => {
    expect(() => parseConfig({ sandbox: { allow: ['example'] } })).toThrow(/sandbox\.allow\.0: expected "host:port"/);
  });

  it('uses defaults when the default file is absent, but an explicit missing file is an error', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-config-'));
    dirs.push(dir);
    await expect(loadConfig({ dir })).resolves.toMatchObject({ config: { sandbox: { pids: 512 } } });
    await expect(loadConfig({ file: path.join(dir, 'nope.yaml') })).rejects.toThrow(/Cannot read config file/);
  });

  it('says which line of a broken YAML file is wrong', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-config-'));
    dirs.push(dir);
    await writeFile(path.join(dir, 'loopbox.yaml'), 'sandbox:\n  pids: [1,\n');
    await expect(loadConfig({ dir })).rejects.toThrow(/not valid YAML \(line \d+\)/);
  });

  it('parses sizes and durations', () => {
    expect(parseSize('512m')).toBe(512 * 1024 ** 2);
    expect(parseSize('1.5g')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('lots')).toBeUndefined();
    expect(parseDuration('1h30m')).toBe(90 * 60_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration(2)).toBe(2000);
    expect(parseDuration('soon')).toBeUndefined();
  });
});
