// Repository in, results out: the git URL the runners clone from and push to. Either the user's
// own remote (cluster.gitUrl), or a bare copy the host serves for the run with `git daemon`
// under an unguessable path; the host fetches back only `loopbox/<task>` and the run's ref.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { LoopboxError, describe } from '../common/errors.js';

/** The ref a runner pushes its run's artifacts to: a commit whose tree is the run folder. */
export function runRef(runId: string): string {
  return `refs/loopbox/runs/${runId}`;
}

/** The ref the host pushes to ask a runner to stop (Swarm does not signal a removed job's container). */
export function stopRef(runId: string): string {
  return `refs/loopbox/stop/${runId}`;
}

export function taskBranch(task: string): string {
  return `loopbox/${task}`;
}

export interface Exchange {
  url: string;
  /** Stops the daemon and removes the served copy (no-op for the user's remote). */
  close(): Promise<void>;
}

const GIT = ['-c', 'core.hooksPath=/dev/null', '-c', 'protocol.file.allow=always'];

export async function git(args: string[], cwd?: string, timeoutMs = 60_000): Promise<string> {
  try {
    const res = await execa('git', [...GIT, ...args], { cwd, timeout: timeoutMs, env: { GIT_TERMINAL_PROMPT: '0' } });
    return res.stdout;
  } catch (error) {
    const e = error as { stderr?: string; timedOut?: boolean };
    throw new LoopboxError(`git ${args.filter((a) => !a.startsWith('-c')).slice(0, 3).join(' ')} failed${e.timedOut ? ` (no answer in ${timeoutMs / 1000} s)` : ''}: ${(e.stderr ?? describe(error)).trim().split('\n').slice(-3).join(' ')}`, { cause: error });
  }
}

/** Every node must reach the URL: checked from the host (`git ls-remote`) before any job starts. */
export async function checkReachable(url: string, timeoutMs = 15_000): Promise<void> {
  try {
    await git(['ls-remote', '--heads', url], undefined, timeoutMs);
  } catch (error) {
    throw new LoopboxError(`The git URL ${url} cannot be reached: ${describe(error)}`, {
      cause: error,
      hint: 'Every labelled node clones from and pushes to it: give cluster.gitUrl a remote the nodes reach (and that accepts pushes of loopbox/* and refs/loopbox/*), or leave it unset so the host serves the repository itself.',
    });
  }
}

/** Pushes the base commit and existing task branches of `repo` to `url`. */
export async function seedRemote(repo: string, url: string, baseCommit: string, tasks: string[]): Promise<void> {
  const refspecs = [`${baseCommit}:refs/loopbox/base`];
  for (const t of tasks) {
    const branch = taskBranch(t);
    const exists = await git(['rev-parse', '--verify', '--quiet', `refs/heads/${branch}`], repo).then(
      () => true,
      () => false,
    );
    if (exists) refspecs.push(`refs/heads/${branch}:refs/heads/${branch}`);
  }
  await git(['push', '--quiet', url, ...refspecs], repo, 120_000);
}

/**
 * A bare copy of `repo` served by `git daemon` on `address` for the run: upload-pack and
 * receive-pack on this one copy only, under a random path, never the user's repository.
 */
export async function serveRepo(repo: string, dir: string, address: string): Promise<Exchange> {
  const token = randomBytes(12).toString('hex');
  const bare = path.join(dir, `${token}.git`);
  await mkdir(dir, { recursive: true });
  await git(['init', '--quiet', '--bare', bare]);
  await git(['config', 'daemon.receivepack', 'true'], bare);
  await git(['config', 'receive.denyNonFastForwards', 'true'], bare);
  const port = await freePort(address);
  const daemon = spawn('git', ['daemon', '--reuseaddr', '--strict-paths', `--base-path=${dir}`, `--listen=${address}`, `--port=${port}`, '--enable=receive-pack', '--export-all', '--informative-errors', bare], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: false,
  });
  let stderr = '';
  daemon.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  const host = address.includes(':') ? `[${address}]` : address;
  const url = `git://${host}:${port}/${token}.git`;
  const close = async (): Promise<void> => {
    await stop(daemon);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitReachable(url, daemon, () => stderr);
  } catch (error) {
    await close();
    throw error;
  }
  return { url, close };
}

async function waitReachable(url: string, daemon: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (daemon.exitCode !== null) throw new LoopboxError(`git daemon for ${url} exited: ${stderr().trim()}`, { hint: 'Is cluster.serveAddress an address of this machine?' });
    try {
      await git(['ls-remote', url], undefined, 5_000);
      return;
    } catch (error) {
      if (Date.now() > deadline) throw new LoopboxError(`git daemon at ${url} does not answer: ${describe(error)}`, { cause: error });
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 3_000).unref();
  });
}

function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', (error) => reject(new LoopboxError(`Cannot listen on ${address}: ${describe(error)}`, { hint: 'cluster.serveAddress must be an address of this machine that the nodes reach.' })));
    server.listen(0, address, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Fetches the task branch (fast-forward only) and the run's ref from `url` into `repo`. */
export async function fetchResults(repo: string, url: string, runId: string, task: string): Promise<{ branch: boolean; artifacts: boolean }> {
  const branch = taskBranch(task);
  const remote = await git(['ls-remote', url, `refs/heads/${branch}`, runRef(runId)]);
  const has = (ref: string): boolean => remote.split('\n').some((l) => l.endsWith(`\t${ref}`));
  const specs: string[] = [];
  if (has(`refs/heads/${branch}`)) specs.push(`refs/heads/${branch}:refs/heads/${branch}`);
  if (has(runRef(runId))) specs.push(`+${runRef(runId)}:${runRef(runId)}`);
  // A branch checked out in a task worktree of an earlier local run is updated too; a branch
  // that moved elsewhere (not a fast-forward) is refused, never overwritten.
  if (specs.length) {
    try {
      await git(['fetch', '--update-head-ok', url, ...specs], repo, 120_000);
    } catch (error) {
      if (/rejected|non-fast-forward/.test(describe(error))) {
        throw new LoopboxError(`The job's ${branch} is not a fast-forward of this repository's ${branch}: not taken (the branch here is unchanged).`, {
          cause: error,
          hint: `Look at it with: git fetch ${url} refs/heads/${branch}:refs/remotes/swarm/${branch}`,
        });
      }
      throw error;
    }
  }
  return { branch: has(`refs/heads/${branch}`), artifacts: has(runRef(runId)) };
}

/** Writes the tree of the run's ref into `dir` (the host's run folder). */
export async function unpackRun(repo: string, runId: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const archive = execa('git', ['archive', '--format=tar', runRef(runId)], { cwd: repo, encoding: 'buffer' });
  const tar = execa('tar', ['-x', '--no-same-owner', '-C', dir], { input: (await archive).stdout });
  await tar;
}

/** Asks the runner of `runId` to stop: a ref it polls for on the git URL. */
export async function requestStop(repo: string, url: string, runId: string, commit: string): Promise<void> {
  await git(['push', '--quiet', '--force', url, `${commit}:${stopRef(runId)}`], repo, 30_000);
}

/** Whether the host asked this run to stop (the runner polls this). */
export async function stopRequested(url: string, runId: string): Promise<boolean> {
  return (await git(['ls-remote', url, stopRef(runId)], undefined, 20_000)).trim().length > 0;
}
