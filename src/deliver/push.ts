// `loop.push`: after a loop ends, the host pushes its result to a git remote with the user's own
// credentials (ssh agent, credential helpers of the user's global git config); the agent's
// sandbox is gone by then and never saw any of it. Only the verified commit becomes the tip of
// `loopbox/<task>`; unverified work goes to `<branch>-wip` or nowhere. It never pushes to the
// base branch, never force-pushes a branch it did not create, and never merges.
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { LoopboxError, describe } from '../common/errors.js';
import { stateDir } from '../common/paths.js';
import type { PushConfig } from '../config/deliver.js';
import { GitError, git, gitStatus, resolveCommit } from '../git/hardened.js';
import type { EndState } from '../loop/brakes.js';
import { writeJsonAtomic } from '../runs/registry.js';

/** A push that could not be made: unreachable remote, rejected, refused by loopbox's own rules. */
export class PushError extends LoopboxError {
  constructor(
    message: string,
    readonly kind: 'unreachable' | 'rejected' | 'auth' | 'refused' | 'config' | 'failed' | 'cancelled',
    hint: string,
    cause?: unknown,
  ) {
    super(message, { hint, cause });
  }
}

export interface PushRequest {
  /** The user's repository: git runs here, never in the agent's worktree. */
  repo: string;
  task: string;
  runId: string;
  endState: EndState;
  verifiedCommit: string | null;
  lastCommit: string | null;
  /** The local task branch (`loopbox/<task>`), for a wip push when the run made no commit this session. */
  localBranch: string;
  config: PushConfig;
  stateEnv?: NodeJS.ProcessEnv | undefined;
  /** The run's stop (Ctrl+C): kills a running ls-remote or push. */
  signal?: AbortSignal | undefined;
}

export type PushOutcome =
  | { status: 'pushed' | 'up-to-date'; remote: string; url: string; branch: string; commit: string; verified: boolean; created: boolean; base: string | null }
  | { status: 'skipped'; reason: string };

/** `loopbox/{task}` → `loopbox/fix-login`. */
export function pushBranchName(template: string, task: string): string {
  return template.replaceAll('{task}', task);
}

/** What a remote URL looks like, as opposed to a remote's name. */
function isUrl(remote: string): boolean {
  return remote.includes('://') || remote.startsWith('/') || remote.startsWith('./') || remote.startsWith('../') || /^[^/:]+@[^/:]+:/.test(remote);
}

/**
 * A remote URL as it may be shown and recorded (delivery.json, notify body, digest, logs, the
 * ledger): without a password or token in its userinfo. An ssh:// user name stays; any other
 * userinfo goes (a GitHub token may be the user name alone). git itself gets the URL as it is.
 */
export function redactUrl(url: string): string {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*:\/\/)([^/?#]*)@/.exec(url);
  if (!m) return url;
  const keep = /^ssh:/i.test(m[1]!) && !m[2]!.includes(':') ? `${m[2]}@` : '';
  return `${m[1]}${keep}${url.slice(m[0].length)}`;
}

/**
 * CI config a forge runs on a push of any branch, often with the repository's secrets: a
 * workflow the agent wrote would run outside every sandbox. A commit that adds or changes one
 * is not pushed (the user reviews it and pushes by hand).
 */
const CI_PATHS = ['.github/workflows', '.github/actions', '.gitea/workflows', '.forgejo/workflows', '.gitlab-ci.yml', '.gitlab', '.circleci', '.travis.yml', 'Jenkinsfile', 'azure-pipelines.yml', '.azure-pipelines', 'bitbucket-pipelines.yml', '.buildkite', '.drone.yml', '.woodpecker.yml', '.woodpecker'];

/** CI files `commit` changes since it forked from the repository's HEAD (all of them without a common commit). */
async function ciChanges(repo: string, commit: string): Promise<string[]> {
  const { stdout, exitCode } = await gitStatus(['merge-base', '--end-of-options', commit, 'HEAD'], { cwd: repo, okExitCodes: [1, 128] });
  const out =
    exitCode === 0 && stdout.trim()
      ? await git(['diff', '--name-only', '-z', '--no-renames', '--no-ext-diff', '--no-textconv', stdout.trim(), commit, '--', ...CI_PATHS], { cwd: repo })
      : await git(['ls-tree', '-r', '--name-only', '-z', commit, '--', ...CI_PATHS], { cwd: repo });
  return out.split('\0').filter(Boolean);
}

/** The push ledger: which remote branches loopbox created, and the commit it last pushed there. */
interface LedgerEntry {
  url: string;
  branch: string;
  commit: string;
  runId: string;
  createdAt: string;
  pushedAt: string;
}

const LEDGER_FILE = 'pushes.json';

function ledgerFile(env?: NodeJS.ProcessEnv): string {
  return path.join(stateDir(env), LEDGER_FILE);
}

async function readLedger(env?: NodeJS.ProcessEnv): Promise<LedgerEntry[]> {
  const file = ledgerFile(env);
  if (!existsSync(file)) return [];
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as unknown;
    return Array.isArray(parsed) ? (parsed as LedgerEntry[]) : [];
  } catch (error) {
    // An unreadable ledger must not turn into "loopbox created nothing, so anything goes" or
    // "loopbox created everything": it stops pushes until someone looks.
    throw new PushError(`The push ledger ${file} cannot be read: ${describe(error)}`, 'config', `Fix or remove ${file}; without it loopbox only fast-forwards remote branches.`);
  }
}

async function recordPush(entry: Omit<LedgerEntry, 'createdAt' | 'pushedAt'>, env?: NodeJS.ProcessEnv): Promise<void> {
  const ledger = await readLedger(env);
  const now = new Date().toISOString();
  const old = ledger.find((e) => e.url === entry.url && e.branch === entry.branch);
  const next = ledger.filter((e) => e !== old);
  next.push({ ...entry, createdAt: old?.createdAt ?? now, pushedAt: now });
  await mkdir(stateDir(env), { recursive: true });
  await writeJsonAtomic(ledgerFile(env), next);
}

/**
 * The credential helpers of the user's own global git config (the hardened runner reads no
 * global config at all): `credential.helper` and URL-scoped ones like
 * `credential.https://github.com.helper` (what `gh auth setup-git` writes), as `key=value` for
 * `-c`. That file is the user's, never the agent's; it is read by git as a plain config file
 * (`--file`), so nothing else in it (hooks, aliases, includes) takes effect.
 */
export async function userCredentialConfig(repo: string, home = homedir(), xdgConfigHome = process.env.XDG_CONFIG_HOME): Promise<string[]> {
  const xdg = xdgConfigHome || path.join(home, '.config');
  const files = [path.join(xdg, 'git', 'config'), path.join(home, '.gitconfig')].filter((f) => existsSync(f));
  const settings: string[] = [];
  for (const file of files) {
    const { stdout } = await gitStatus(['config', '--file', file, '--null', '--get-regexp', '^credential\\..*helper$'], { cwd: repo, okExitCodes: [1] });
    // --null: each entry is `key\nvalue\0`, so a value may hold anything but NUL.
    for (const entry of stdout.split('\0')) {
      const nl = entry.indexOf('\n');
      if (nl > 0) settings.push(`${entry.slice(0, nl)}=${entry.slice(nl + 1)}`);
    }
  }
  return settings;
}

/** Classifies a failed `git push` / `ls-remote` into a PushError that says what to do. */
function pushFailure(error: unknown, rawUrl: string, branch: string, what: string): PushError {
  const url = redactUrl(rawUrl);
  const stderr = error instanceof GitError ? error.failure.stderrTail : describe(error);
  const first = `${what} ${url} failed`;
  if (error instanceof GitError && error.failure.cancelled) {
    return new PushError(`${what} ${url} was cancelled (the run was stopped)`, 'cancelled', `Nothing was pushed by this attempt; push the local branch later with \`git push\`.`, error);
  }
  if (error instanceof GitError && error.failure.signal) {
    return new PushError(`${first}: timed out or was killed\n${stderr}`, 'unreachable', 'Check that the remote answers (git ls-remote <url>) or raise loop.push.timeout.', error);
  }
  if (/Authentication failed|Permission denied|could not read Username|terminal prompts disabled|403|401/i.test(stderr)) {
    return new PushError(`${first}: the remote refused the credentials\n${stderr}`, 'auth', 'loopbox pushes with your ssh agent or the credential.helper of your global git config; check `git push` to this remote works from a terminal.', error);
  }
  if (/\[rejected\]|\[remote rejected\]|non-fast-forward|hook declined|denied|protected branch/i.test(stderr)) {
    return new PushError(`${first}: the remote rejected ${branch}\n${stderr}`, 'rejected', `Nothing was changed on the remote or in the run. Look at the remote's rules for ${branch}, or set loop.push.branch to another name.`, error);
  }
  if (/Could not read from remote|unable to access|Connection refused|does not appear to be a git repository|Could not resolve host|unable to connect|not found|timed out/i.test(stderr)) {
    return new PushError(`${first}: the remote cannot be reached\n${stderr}`, 'unreachable', 'Check the URL and the network (git ls-remote <url>); the run and its branch are kept, push later with `git push`.', error);
  }
  return new PushError(`${first}\n${stderr}`, 'failed', 'The run and its local branch are untouched; push by hand once the cause is fixed.', error);
}

interface RemoteView {
  /** The remote's default branch (its HEAD symref), when it says. */
  head: string | null;
  /** The commit the target branch points to on the remote, or null when it does not exist. */
  tip: string | null;
}

async function lsRemote(repo: string, url: string, branch: string, helpers: string[], timeoutMs: number, signal?: AbortSignal): Promise<RemoteView> {
  let out: string;
  try {
    // `--end-of-options`: a URL may not be read as an option, whatever it starts with.
    out = await git(['ls-remote', '--symref', '--end-of-options', url, 'HEAD', `refs/heads/${branch}`], { cwd: repo, transport: { credentialConfig: helpers }, timeoutMs, signal });
  } catch (error) {
    throw pushFailure(error, url, branch, 'git ls-remote');
  }
  let head: string | null = null;
  let tip: string | null = null;
  for (const line of out.split('\n')) {
    const sym = /^ref: refs\/heads\/(\S+)\tHEAD$/.exec(line);
    if (sym) head = sym[1]!;
    const ref = /^([0-9a-f]{40,64})\trefs\/heads\/(.+)$/.exec(line);
    if (ref && ref[2] === branch) tip = ref[1]!;
  }
  return { head, tip };
}

/** The remote's URL: a URL as given, or the push URL of the named remote in the user's repo. */
export async function remoteUrl(repo: string, remote: string): Promise<string> {
  if (isUrl(remote)) return remote;
  const { stdout, exitCode } = await gitStatus(['remote', 'get-url', '--push', remote], { cwd: repo, okExitCodes: [2, 128] });
  if (exitCode !== 0 || !stdout.trim()) {
    throw new PushError(`The repository ${repo} has no remote named ${JSON.stringify(remote)}.`, 'config', `Add it (git remote add ${remote} <url>) or set loop.push.remote to a URL.`);
  }
  const url = stdout.trim();
  if (/^(ext|fd)::/i.test(url)) throw new PushError(`The remote ${remote} is ${url}: ext:: and fd:: remotes run programs; loopbox refuses them.`, 'config', 'Use an ssh://, https://, git:// or file:// remote.');
  return url;
}

/**
 * Pushes the run's result. Throws PushError (with what to do) when it cannot; never changes the
 * run, its worktree or its local branch, and never touches the base branch.
 */
export async function pushRun(req: PushRequest): Promise<PushOutcome> {
  const { config, repo } = req;
  const named = pushBranchName(config.branch, req.task);
  let commit: string | null;
  let branch: string;
  let verified: boolean;
  if (req.endState === 'done' && req.verifiedCommit) {
    commit = req.verifiedCommit;
    branch = named;
    verified = true;
  } else if (config.unverified === 'wip') {
    commit = req.lastCommit ?? (await resolveCommit(repo, `refs/heads/${req.localBranch}`)) ?? null;
    branch = `${named}-wip`;
    verified = false;
    if (!commit) return { status: 'skipped', reason: 'the run made no commit to push' };
  } else {
    return { status: 'skipped', reason: `the loop ended ${req.endState} without a verified commit (loop.push.unverified: skip)` };
  }
  // The ref name is checked by git itself, so `{task}` cannot make it a path or an option.
  const { exitCode: refOk } = await gitStatus(['check-ref-format', `refs/heads/${branch}`], { cwd: repo, okExitCodes: [1] });
  if (refOk !== 0) throw new PushError(`${JSON.stringify(branch)} is not a valid branch name.`, 'config', 'Set loop.push.branch to a name like "loopbox/{task}".');

  const ci = await ciChanges(repo, commit);
  if (ci.length) {
    throw new PushError(
      `Refusing to push ${commit.slice(0, 12)}: it changes CI config (${ci.slice(0, 5).join(', ')}${ci.length > 5 ? ', …' : ''}), which the remote's CI would run with the repository's secrets.`,
      'refused',
      `Review the change on the local branch ${req.localBranch} and push it by hand if it is what you want; loopbox never pushes agent-written CI config.`,
    );
  }

  const url = await remoteUrl(repo, config.remote);
  const helpers = await userCredentialConfig(repo);
  const view = await lsRemote(repo, url, branch, helpers, config.timeout, req.signal);
  const localHead = (await gitStatus(['symbolic-ref', '-q', '--short', 'HEAD'], { cwd: repo, okExitCodes: [1] })).stdout.trim() || null;
  const bases = [...new Set([view.head, localHead].filter((b): b is string => b !== null))];
  if (bases.includes(branch)) {
    throw new PushError(`Refusing to push to ${branch}: it is the base branch (${bases.join(', ')}).`, 'refused', 'loopbox pushes only its own branches and never to the base branch; set loop.push.branch to a name like "loopbox/{task}".');
  }
  // What is shown and recorded never carries the remote's credentials (`url` goes to git only).
  const shown = redactUrl(url);
  const outcome = { remote: config.remote, url: shown, branch, commit, verified, base: view.head ?? localHead };
  if (view.tip === commit) return { status: 'up-to-date', ...outcome, created: false };

  const ledger = await readLedger(req.stateEnv);
  const ours = ledger.find((e) => e.url === shown && e.branch === branch);
  const args = ['push', '--no-verify', '--no-follow-tags', '--recurse-submodules=no', '--no-signed'];
  if (view.tip !== null) {
    // A fast-forward needs no force. `--is-ancestor` exits 1 for "no" and 128 when the remote's
    // tip is not even in this repository (someone else's history).
    const { exitCode } = await gitStatus(['merge-base', '--is-ancestor', view.tip, commit], { cwd: repo, okExitCodes: [1, 128] });
    if (exitCode !== 0) {
      if (ours?.commit !== view.tip) {
        throw new PushError(
          `Refusing to overwrite ${branch} on ${shown}: it points to ${view.tip.slice(0, 12)}, which ${commit.slice(0, 12)} does not contain, and loopbox did not push that commit there${ours ? ` (it last pushed ${ours.commit.slice(0, 12)})` : ' (the branch was not created by loopbox)'}.`,
          'refused',
          `loopbox never force-pushes a branch it did not create. Delete or rename the remote branch, or set loop.push.branch to another name; the run's work is on the local branch ${req.localBranch}.`,
        );
      }
      // Our own branch, and still at what we pushed: replace it, but only if nobody moved it since.
      args.push(`--force-with-lease=refs/heads/${branch}:${view.tip}`);
    }
  }
  try {
    await git([...args, '--', url, `${commit}:refs/heads/${branch}`], { cwd: repo, transport: { credentialConfig: helpers }, timeoutMs: config.timeout, signal: req.signal });
  } catch (error) {
    throw pushFailure(error, url, branch, 'git push to');
  }
  await recordPush({ url: shown, branch, commit, runId: req.runId }, req.stateEnv);
  return { status: 'pushed', ...outcome, created: view.tip === null };
}
