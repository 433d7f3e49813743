// Results come back by git: the host takes the task branch only as a fast-forward and the run's
// ref, nothing else a runner (or anyone who reached the served copy) pushed.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { fetchResults, runRef } from '../../src/cluster/exchange.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function repo(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'lbx-exchange-'));
  dirs.push(dir);
  await execa('git', ['init', '--quiet', '-b', 'main', dir]);
  return dir;
}

async function commit(dir: string, file: string): Promise<string> {
  await execa('bash', ['-c', `echo ${file} > ${file}`], { cwd: dir });
  await execa('git', ['add', '-A'], { cwd: dir });
  await execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', file], { cwd: dir });
  return (await execa('git', ['rev-parse', 'HEAD'], { cwd: dir })).stdout;
}

describe('fetching a swarm job\'s results', () => {
  it('takes the task branch as a fast-forward and the run ref, and nothing else', async () => {
    const host = await repo();
    const base = await commit(host, 'a');
    await execa('git', ['branch', 'loopbox/t', base], { cwd: host });
    const remote = await repo();
    await execa('git', ['fetch', '--quiet', host, 'refs/heads/loopbox/t:refs/heads/loopbox/t'], { cwd: remote });
    await execa('git', ['checkout', '--quiet', 'loopbox/t'], { cwd: remote });
    const tip = await commit(remote, 'b');
    await execa('git', ['update-ref', runRef('r1'), tip], { cwd: remote });
    await execa('git', ['update-ref', 'refs/heads/main', tip], { cwd: remote });
    const got = await fetchResults(host, remote, 'r1', 't');
    expect(got).toEqual({ branch: true, artifacts: true });
    expect((await execa('git', ['rev-parse', 'loopbox/t'], { cwd: host })).stdout).toBe(tip);
    expect((await execa('git', ['rev-parse', runRef('r1')], { cwd: host })).stdout).toBe(tip);
    // main was not taken from the remote.
    expect((await execa('git', ['rev-parse', 'main'], { cwd: host })).stdout).toBe(base);
  });

  it('refuses a task branch that was rewritten on the remote (not a fast-forward): the host\'s branch stays', async () => {
    const host = await repo();
    await commit(host, 'a');
    const mine = await commit(host, 'b');
    await execa('git', ['branch', 'loopbox/t', mine], { cwd: host });
    const remote = await repo();
    const other = await commit(remote, 'forged');
    await execa('git', ['branch', 'loopbox/t', other], { cwd: remote });
    await expect(fetchResults(host, remote, 'r2', 't')).rejects.toThrow(/loopbox\/t is not a fast-forward of this repository's loopbox\/t: not taken/);
    expect((await execa('git', ['rev-parse', 'loopbox/t'], { cwd: host })).stdout).toBe(mine);
  });
});
