// `loop.pullRequest`: after a push, open (or update) a draft pull request on GitHub. loopbox
// builds the REST requests itself (find the open PR for the branch, then PATCH it or POST a new
// draft) and sends them through `gh api`, so the user's `gh auth` does the authentication and
// loopbox never holds a token. It never merges and never marks a PR ready.
import { execa } from 'execa';
import { LoopboxError, describe } from '../common/errors.js';

export class PullRequestError extends LoopboxError {
  constructor(
    message: string,
    readonly kind: 'no-gh' | 'auth' | 'not-github' | 'api',
    hint: string,
  ) {
    super(message, { hint });
  }
}

export const GH_INSTALL_HINT = 'Install the GitHub CLI (https://cli.github.com; Debian/Ubuntu: apt-get install gh), run `gh auth login` as the user that runs loopbox, or set loop.pullRequest: false.';

/** One REST request; `path` is relative to the API root (`repos/o/r/pulls`). */
export interface ApiRequest {
  method: 'GET' | 'POST' | 'PATCH';
  path: string;
  body?: Record<string, unknown>;
}

export interface ApiResponse {
  status: number;
  json: unknown;
}

/** How requests reach GitHub: `gh api` in use; a plain HTTP client for the contract check. */
export type GitHubTransport = (request: ApiRequest) => Promise<ApiResponse>;

export interface GitHubRepo {
  host: string;
  owner: string;
  repo: string;
}

/** owner/repo (and host) of a GitHub remote URL, or undefined for any other remote. */
export function githubRepoOf(url: string): GitHubRepo | undefined {
  const m =
    /^(?:https?|ssh|git):\/\/(?:[^@/]+@)?([^/:]+)(?::\d+)?\/([^/]+)\/([^/]+?)(?:\.git)?\/?$/.exec(url) ??
    /^(?:[^@/]+@)?([^/:]+):([^/]+)\/([^/]+?)(?:\.git)?\/?$/.exec(url);
  if (!m) return undefined;
  const [, host, owner, repo] = m;
  if (!host || !owner || !repo || !/^[A-Za-z0-9_.-]+$/.test(owner) || !/^[A-Za-z0-9_.-]+$/.test(repo)) return undefined;
  if (host !== 'github.com' && !/(^|\.)github\./.test(host) && host !== process.env.GH_HOST) return undefined;
  return { host, owner, repo };
}

/** What the PR says about the run. Every string came from the run (agent-influenced) and is quoted. */
export interface PullRequestFacts {
  task: string;
  runId: string;
  endState: string;
  reason: string;
  iterations: number;
  evidence: string;
  /** Whether the base tree's tests passed before the loop started (null: no baseline). */
  basePasses: boolean | null;
  review: string | null;
  blocked: number;
  verifiedCommit: string | null;
  report: string | null;
}

// A lone CR is a markdown line ending too: it would end the code span (and the table row).
const code = (s: string): string => `\`${s.replace(/`/g, "'").replace(/[\r\n]/g, ' ')}\``;

export function pullRequestTitle(f: PullRequestFacts): string {
  return `loopbox: ${f.task.replace(/[\r\n]/g, ' ')}${f.endState === 'done' ? '' : ` (${f.endState}, unverified)`}`;
}

export function pullRequestBody(f: PullRequestFacts): string {
  const lines = [
    `Opened by loopbox after run ${code(f.runId)} ended **${f.endState}**: ${code(f.reason)}.`,
    '',
    '| | |',
    '|---|---|',
    `| task | ${code(f.task)} |`,
    `| iterations | ${f.iterations} |`,
    `| verified commit | ${f.verifiedCommit ? code(f.verifiedCommit) : 'none'} |`,
    `| evidence | ${code(f.evidence)} |`,
    `| base tests | ${f.basePasses === null ? 'no baseline' : f.basePasses ? 'already passed before the loop (the tests may not cover the task)' : 'failed before the loop'} |`,
    `| reviewer | ${f.review ? code(f.review) : 'not configured'} |`,
    `| blocked egress attempts | ${f.blocked} |`,
    `| report | ${f.report ? code(f.report) : 'not written'} |`,
    '',
    'This pull request is a draft: loopbox never merges. Review the diff before marking it ready.',
  ];
  return lines.join('\n');
}

function apiError(res: ApiResponse, what: string): PullRequestError {
  const message = typeof res.json === 'object' && res.json !== null && 'message' in res.json ? String((res.json).message) : '';
  if (res.status === 401) return new PullRequestError(`${what}: GitHub refused the credentials (HTTP 401${message ? `: ${message}` : ''}).`, 'auth', 'The gh token is missing or expired: run `gh auth login` (or `gh auth refresh`) as the user that runs loopbox.');
  if (res.status === 403 || res.status === 404) return new PullRequestError(`${what}: HTTP ${res.status}${message ? ` (${message})` : ''}.`, 'api', 'Check that the gh account can open pull requests on this repository (`gh auth status`, repository access, token scopes).');
  return new PullRequestError(`${what}: HTTP ${res.status}${message ? ` (${message})` : ''}.`, 'api', 'The branch was pushed; open the pull request by hand (gh pr create --draft) once the cause is fixed.');
}

export type PullRequestOutcome = { status: 'opened' | 'updated'; number: number; url: string };

/** Finds the open PR for `head` and updates it, or opens a draft one. */
export async function openOrUpdatePullRequest(send: GitHubTransport, repo: GitHubRepo, head: string, base: string, facts: PullRequestFacts): Promise<PullRequestOutcome> {
  const root = `repos/${repo.owner}/${repo.repo}/pulls`;
  const title = pullRequestTitle(facts);
  const body = pullRequestBody(facts);
  const found = await send({ method: 'GET', path: `${root}?head=${encodeURIComponent(`${repo.owner}:${head}`)}&state=open&per_page=1` });
  if (found.status !== 200) throw apiError(found, `Looking up the pull request for ${head}`);
  const open = Array.isArray(found.json) ? (found.json[0] as { number?: number; html_url?: string } | undefined) : undefined;
  if (open?.number !== undefined) {
    const res = await send({ method: 'PATCH', path: `${root}/${open.number}`, body: { title, body } });
    if (res.status !== 200) throw apiError(res, `Updating pull request #${open.number}`);
    return { status: 'updated', number: open.number, url: String((res.json as { html_url?: string }).html_url ?? open.html_url ?? '') };
  }
  const res = await send({ method: 'POST', path: root, body: { title, head, base, body, draft: true, maintainer_can_modify: false } });
  if (res.status !== 201) throw apiError(res, `Opening a pull request from ${head} into ${base}`);
  const pr = res.json as { number: number; html_url: string };
  return { status: 'opened', number: pr.number, url: pr.html_url };
}

/** `gh api` argv for one request: the body goes on stdin as JSON (`--input -`). */
export function ghApiArgs(request: ApiRequest, host: string): string[] {
  const args = ['api', '--hostname', host, '--method', request.method, '--include', '-H', 'Accept: application/vnd.github+json', request.path];
  if (request.body) args.push('--input', '-');
  return args;
}

/** Parses `gh api --include` output: the status line, headers, a blank line, the JSON body. */
export function parseGhInclude(stdout: string): ApiResponse | undefined {
  const m = /^HTTP\/[\d.]+ (\d{3})[^\n]*\r?\n[\s\S]*?\r?\n\r?\n([\s\S]*)$/.exec(stdout);
  if (!m) return undefined;
  let json: unknown = null;
  try {
    json = m[2]!.trim() ? JSON.parse(m[2]!) : null;
  } catch {
    json = m[2];
  }
  return { status: Number(m[1]), json };
}

/** The transport in use: `gh api`, with gh's own authentication. */
export function ghTransport(host: string, timeoutMs = 60_000, signal?: AbortSignal): GitHubTransport {
  return async (request) => {
    const result = await execa('gh', ghApiArgs(request, host), { input: request.body ? JSON.stringify(request.body) : '', reject: false, timeout: timeoutMs, ...(signal ? { cancelSignal: signal } : {}), env: { GH_PROMPT_DISABLED: '1', GH_NO_UPDATE_NOTIFIER: '1' } });
    if ((result.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') throw new PullRequestError('The GitHub CLI (gh) is not installed, so loopbox cannot open a pull request.', 'no-gh', GH_INSTALL_HINT);
    const parsed = parseGhInclude(typeof result.stdout === 'string' ? result.stdout : '');
    if (parsed) return parsed;
    const stderr = typeof result.stderr === 'string' ? result.stderr.trim() : '';
    // Exit code 4: gh is not logged in (https://cli.github.com/manual/gh_help_exit-codes).
    if (result.exitCode === 4 || /gh auth login|authentication|HTTP 401/i.test(stderr)) {
      throw new PullRequestError(`gh is not authenticated for ${host}: ${stderr.split('\n')[0] ?? ''}`, 'auth', 'Run `gh auth login` (or `gh auth refresh`) as the user that runs loopbox.');
    }
    throw new PullRequestError(`gh api ${request.method} ${request.path} failed (${result.timedOut ? 'timed out' : `exit code ${result.exitCode ?? '?'}`}): ${stderr || describe(result.cause ?? '')}`, 'api', 'Check `gh auth status` and the network; the branch was pushed, open the PR by hand if needed.');
  };
}

/** A plain HTTP client of the same REST API: what the contract check sends through (test/unit/pull-request.test.ts). */
export function httpTransport(apiRoot: string, token: string | undefined, timeoutMs = 60_000): GitHubTransport {
  return async (request) => {
    const res = await fetch(`${apiRoot.replace(/\/$/, '')}/${request.path}`, {
      method: request.method,
      headers: { accept: 'application/vnd.github+json', 'content-type': 'application/json', 'user-agent': 'loopbox', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      ...(request.body ? { body: JSON.stringify(request.body) } : {}),
      redirect: 'error',
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    return { status: res.status, json };
  };
}

/** Is `gh` on PATH? (For a check before any loop starts: bad input loses nothing.) */
export async function ghInstalled(): Promise<boolean> {
  const r = await execa('gh', ['--version'], { reject: false, timeout: 10_000 });
  return r.exitCode === 0;
}
