// `loopbox doctor`'s delivery checks against real things: a bare repository as the push remote,
// a silent TCP listener on loopback as a remote that never answers, a PATH without gh, and the
// process environment for the notify secret. Nothing leaves this machine.
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/schema.js';
import { deliveryChecks } from '../../src/deliver/checks.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1', GIT_AUTHOR_NAME: 'T', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 'T', GIT_COMMITTER_EMAIL: 't@example.com' };
const sh = async (cwd: string, ...args: string[]): Promise<string> => (await execa('git', args, { cwd, env: userEnv })).stdout.trim();

async function world(): Promise<{ root: string; repo: string; bare: string; noGh: string }> {
  const root = await mkdtemp(path.join(tmpdir(), 'lbx-doctor-'));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  const repo = path.join(root, 'repo');
  const bare = path.join(root, 'remote.git');
  const noGh = path.join(root, 'bin');
  await mkdir(repo);
  await mkdir(noGh);
  await sh(repo, 'init', '-q', '-b', 'main');
  await sh(repo, 'commit', '-q', '--allow-empty', '-m', 'init', '--no-gpg-sign');
  await sh(root, 'init', '-q', '--bare', '-b', 'main', bare);
  await sh(repo, 'remote', 'add', 'origin', `file://${bare}`);
  await sh(repo, 'push', '-q', 'origin', 'main');
  return { root, repo, bare, noGh };
}

const SECRET = 'a'.repeat(64);

describe('loopbox doctor: delivery prerequisites', () => {
  it('nothing configured: no checks', async () => {
    const { repo } = await world();
    expect(await deliveryChecks(configSchema.parse({}), { repo })).toEqual([]);
  });

  it('gh missing from PATH, the push remote a real bare repository, the notify secret unset', async () => {
    const { repo, bare, noGh } = await world();
    const config = configSchema.parse({ loop: { push: 'origin', pullRequest: true }, notify: { webhook: 'http://127.0.0.1:9/hook', secretEnv: 'LBX_DOCTOR_SECRET' } });
    const checks = await deliveryChecks(config, { repo, env: { PATH: noGh } });
    expect(checks.map((c) => [c.name, c.ok])).toEqual([
      ['gh', false],
      ['push remote', true],
      ['notify secret', false],
    ]);
    expect(checks[0]!.detail).toMatch(/not installed.*install gh, then run `gh auth login`/);
    expect(checks[0]!.hint).toMatch(/cli\.github\.com/);
    expect(checks[1]!.detail).toBe(`origin (file://${bare}) answers in ${/answers in (\d+) ms/.exec(checks[1]!.detail)?.[1] ?? '?'} ms, default branch main`);
    expect(checks[2]!.detail).toMatch(/LBX_DOCTOR_SECRET, which is not set/);
    expect(checks[2]!.hint).toMatch(/openssl rand -hex 32/);

    const fixed = await deliveryChecks(config, { repo, env: { PATH: noGh, LBX_DOCTOR_SECRET: SECRET } });
    expect(fixed[2]).toEqual({ name: 'notify secret', ok: true, detail: 'LBX_DOCTOR_SECRET is set' });
  });

  it('gh installed but not logged in: says to run gh auth login', async () => {
    const { repo, noGh } = await world();
    // A stand-in for gh with gh's own answers (gh is not installed on the test machine).
    const gh = path.join(noGh, 'gh');
    await writeFile(gh, '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "gh version 2.40.0 (2024-01-01)"; exit 0; fi\necho "You are not logged into any GitHub hosts. To log in, run: gh auth login" >&2\nexit 1\n');
    await chmod(gh, 0o755);
    const config = configSchema.parse({ loop: { push: 'origin', pullRequest: true } });
    const [check] = await deliveryChecks(config, { repo, env: { PATH: noGh } });
    expect(check).toMatchObject({ name: 'gh', ok: false });
    expect(check!.detail).toMatch(/^installed, not logged in: run `gh auth login` \(gh says: You are not logged into any GitHub hosts/);
    await writeFile(gh, '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "gh version 2.40.0 (2024-01-01)"; fi\nexit 0\n');
    const [ok] = await deliveryChecks(config, { repo, env: { PATH: noGh } });
    expect(ok).toEqual({ name: 'gh', ok: true, detail: 'gh version 2.40.0 (2024-01-01), logged in' });
  });

  it('a remote that does not exist, a remote name the repository lacks, and a remote that never answers (bounded)', async () => {
    const { repo, root } = await world();
    const gone = await deliveryChecks(configSchema.parse({ loop: { push: `file://${root}/nope.git` } }), { repo });
    expect(gone[0]).toMatchObject({ name: 'push remote', ok: false });
    expect(gone[0]!.detail).toMatch(/cannot be reached: .*(does not appear to be a git repository|Could not read from remote)/);
    expect(gone[0]!.hint).toMatch(/git ls-remote/);

    const unnamed = await deliveryChecks(configSchema.parse({ loop: { push: 'upstream' } }), { repo });
    expect(unnamed[0]).toMatchObject({ name: 'push remote', ok: false, hint: expect.stringMatching(/git remote add upstream/) as unknown });

    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const started = Date.now();
    const hung = await deliveryChecks(configSchema.parse({ loop: { push: `git://127.0.0.1:${(silent.address() as AddressInfo).port}/r.git` } }), { repo, timeoutMs: 800 });
    expect(Date.now() - started).toBeLessThan(8000);
    expect(hung[0]).toMatchObject({ name: 'push remote', ok: false });
    expect(hung[0]!.detail).toMatch(/did not answer within 800 ms/);
  });
});
