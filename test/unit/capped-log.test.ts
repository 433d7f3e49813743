import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CappedLog } from '../../src/loop/capped-log.js';

describe('the agent output cap', () => {
  it('keeps the head and the tail within the cap and counts what it dropped', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-cap-'));
    const log = new CappedLog(path.join(dir, 'a.log'), 100);
    log.write(Buffer.from('H'.repeat(30)));
    for (let i = 0; i < 50; i += 1) log.write(Buffer.from('x'.repeat(20)));
    log.write(Buffer.from('T'.repeat(40)));
    await log.close();
    const text = await readFile(path.join(dir, 'a.log'), 'utf8');
    expect(text.startsWith(`${'H'.repeat(30)}${'x'.repeat(20)}`)).toBe(true);
    expect(text.endsWith(`${'x'.repeat(10)}${'T'.repeat(40)}`)).toBe(true);
    expect(log.dropped).toBe(30 + 50 * 20 + 40 - 100);
    expect(text).toContain(`[loopbox: ${log.dropped} bytes of agent output dropped here`);
    await rm(dir, { recursive: true });
  });

  it('drops nothing under the cap', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-cap-'));
    const log = new CappedLog(path.join(dir, 'a.log'), 1000);
    log.write('hello\n');
    await log.close();
    expect(await readFile(path.join(dir, 'a.log'), 'utf8')).toBe('hello\n');
    expect(log.dropped).toBe(0);
    await rm(dir, { recursive: true });
  });
});
