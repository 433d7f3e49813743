// gc removes what dead runs left behind, keeps live runs' resources, and never touches
// anything without loopbox's labels.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runDir } from '../../src/common/paths.js';
import { resourceLabels } from '../../src/docker/labels.js';
import { imageRef } from '../../src/images/catalog.js';
import { beginTestRun, cli, docker, endTestRun, remaining, testRunId } from './helpers.js';

describe('loopbox gc (real Docker)', () => {
  const dead = testRunId('gc-dead');
  const live = testRunId('gc-live');
  const unlabelled = `lbx-unlabelled-${testRunId('x')}`;
  let liveRecord: Awaited<ReturnType<typeof beginTestRun>>;

  afterAll(async () => {
    await docker.remove(unlabelled);
    await docker.removeNetwork(`${dead}-net`);
    if (liveRecord) await endTestRun(liveRecord);
  });

  it('removes a dead run\'s containers and networks, keeps a live run\'s and unlabelled ones', async () => {
    // A run whose process is gone: a pid that cannot exist.
    await mkdir(runDir(dead), { recursive: true });
    await writeFile(
      path.join(runDir(dead), 'run.json'),
      JSON.stringify({ runId: dead, kind: 'test', pid: 2 ** 22 + 1, pidStart: '1', hostname: (await import('node:os')).hostname(), startedAt: new Date().toISOString() }),
    );
    liveRecord = await beginTestRun(live);
    const make = async (runId: string, name: string, labelled = true): Promise<string> => {
      const id = await docker.createContainer({ name, image: imageRef('agent'), cmd: ['sleep', '300'], labels: labelled ? resourceLabels({ runId, role: 'test' }) : {}, networkMode: 'none' });
      await docker.start(id);
      return id;
    };
    await make(dead, `lbx-${dead}-a`);
    await make(dead, `lbx-${dead}-b`);
    await make(live, `lbx-${live}-a`);
    await make(live, unlabelled, false);
    // A run with no record at all (a crash before run.json) is dead too.
    const orphan = testRunId('gc-orphan');
    await make(orphan, `lbx-${orphan}-a`);
    await docker.createNetwork({ name: `${dead}-net`, internal: true, labels: resourceLabels({ runId: dead, role: 'network' }) });

    const dry = await cli(['gc', '--dry-run']);
    expect(dry.exitCode, dry.all).toBe(0);
    expect(dry.stdout).toContain(`would remove container lbx-${dead}-a`);
    expect(dry.stdout).toContain(`would remove network ${dead}-net`);
    expect(dry.stdout).toContain(`lbx-${orphan}-a`);
    expect(dry.stdout).not.toContain(live);
    expect(await remaining(dead)).toHaveLength(3);

    const res = await cli(['gc']);
    expect(res.exitCode, res.all).toBe(0);
    expect(await remaining(dead)).toEqual([]);
    expect(await remaining(orphan)).toEqual([]);
    expect(await remaining(live)).toEqual([`container lbx-${live}-a`]);
    expect((await docker.inspect(unlabelled)).State.Running).toBe(true);
  });
});
