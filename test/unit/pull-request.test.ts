// The pull request: `gh` is not installed on this machine, so what GitHub would receive is
// checked as a CONTRACT CHECK only: loopbox's own request code (find the open PR, then PATCH it
// or POST a draft) sends through a plain HTTP transport to a local server that records every
// request and answers like the GitHub REST API. It shows what loopbox asks for, not that
// GitHub or gh accept it. The gh side is checked where it can be without gh: the argv it would
// run, the parsing of its `--include` output, and the message when it is missing.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/schema.js';
import { checkDeliveryConfig } from '../../src/deliver/deliver.js';
import { type PullRequestFacts, PullRequestError, ghApiArgs, pullRequestBody, ghTransport, githubRepoOf, httpTransport, openOrUpdatePullRequest, parseGhInclude } from '../../src/deliver/pull-request.js';

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

interface Recorded {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: unknown;
}

async function fakeGitHub(answer: (r: Recorded) => { status: number; json: unknown }): Promise<{ root: string; seen: Recorded[] }> {
  const seen: Recorded[] = [];
  const s = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const r: Recorded = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: text ? JSON.parse(text) : null };
      seen.push(r);
      const { status, json } = answer(r);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(json));
    });
  });
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise<void>((resolve) => s.close(() => resolve())));
  return { root: `http://127.0.0.1:${(s.address() as AddressInfo).port}/api/v3`, seen };
}

const facts: PullRequestFacts = {
  task: 'fix-login', runId: '20261208-010203-abcdef', endState: 'done', reason: 'verified: `npm test` passed', iterations: 3,
  evidence: '12 of 12 tests pass', basePasses: false, review: 'approve by reviewer-1', blocked: 7, verifiedCommit: 'c'.repeat(40), report: '/state/runs/x/report.html',
};
const repo = { host: 'github.com', owner: 'acme', repo: 'app' };

describe('pull request (contract check against a local recording server, not GitHub)', () => {
  it('contract check: no open PR for the branch → GET then POST of a draft with the run\'s facts', async () => {
    const { root, seen } = await fakeGitHub((r) => (r.method === 'GET' ? { status: 200, json: [] } : { status: 201, json: { number: 42, html_url: 'https://github.com/acme/app/pull/42' } }));
    const out = await openOrUpdatePullRequest(httpTransport(root, 'tok'), repo, 'loopbox/fix-login', 'main', facts);
    expect(out).toEqual({ status: 'opened', number: 42, url: 'https://github.com/acme/app/pull/42' });
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(['GET /api/v3/repos/acme/app/pulls?head=acme%3Aloopbox%2Ffix-login&state=open&per_page=1', 'POST /api/v3/repos/acme/app/pulls']);
    const body = seen[1]!.body as Record<string, unknown>;
    expect(body).toMatchObject({ head: 'loopbox/fix-login', base: 'main', draft: true, title: 'loopbox: fix-login' });
    expect(Object.keys(body).sort()).toEqual(['base', 'body', 'draft', 'head', 'maintainer_can_modify', 'title']);
    const text = String(body.body);
    for (const want of ['**done**', '`fix-login`', '| iterations | 3 |', '12 of 12 tests pass', 'failed before the loop', 'approve by reviewer-1', '| blocked egress attempts | 7 |', 'report.html', 'never merges']) expect(text).toContain(want);
    // A backtick in the agent-influenced reason cannot close the code span.
    expect(text).toContain("`verified: 'npm test' passed`");
    expect(seen[1]!.headers.authorization).toBe('Bearer tok');
  });

  it('contract check: an open PR for the branch is updated (PATCH title and body), never a second one, never merged', async () => {
    const { root, seen } = await fakeGitHub((r) => (r.method === 'GET' ? { status: 200, json: [{ number: 7, html_url: 'https://github.com/acme/app/pull/7' }] } : { status: 200, json: { number: 7, html_url: 'https://github.com/acme/app/pull/7' } }));
    const out = await openOrUpdatePullRequest(httpTransport(root, 'tok'), repo, 'loopbox/fix-login', 'main', { ...facts, endState: 'capped' });
    expect(out).toEqual({ status: 'updated', number: 7, url: 'https://github.com/acme/app/pull/7' });
    expect(seen.map((s) => `${s.method} ${s.url.replace(/\?.*/, '')}`)).toEqual(['GET /api/v3/repos/acme/app/pulls', 'PATCH /api/v3/repos/acme/app/pulls/7']);
    expect(Object.keys(seen[1]!.body as object).sort()).toEqual(['body', 'title']);
    expect((seen[1]!.body as { title: string }).title).toBe('loopbox: fix-login (capped, unverified)');
    expect(seen.some((s) => /merge/.test(s.url))).toBe(false);
  });

  it('contract check: an expired token (HTTP 401) is a clear error that says to run gh auth login', async () => {
    const { root } = await fakeGitHub(() => ({ status: 401, json: { message: 'Bad credentials' } }));
    const error = await openOrUpdatePullRequest(httpTransport(root, 'expired'), repo, 'loopbox/fix-login', 'main', facts).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(PullRequestError);
    expect((error as PullRequestError).kind).toBe('auth');
    expect((error as PullRequestError).message).toMatch(/HTTP 401: Bad credentials/);
    expect((error as PullRequestError).hint).toMatch(/gh auth login/);
  });
});

describe('pull request: the gh side, without gh', () => {
  it('the gh api argv carries the same method and path, the JSON body on stdin', () => {
    expect(ghApiArgs({ method: 'POST', path: 'repos/acme/app/pulls', body: { a: 1 } }, 'github.com')).toEqual(['api', '--hostname', 'github.com', '--method', 'POST', '--include', '-H', 'Accept: application/vnd.github+json', 'repos/acme/app/pulls', '--input', '-']);
    expect(parseGhInclude('HTTP/2.0 201 Created\r\nContent-Type: application/json\r\n\r\n{"number":5}')).toEqual({ status: 201, json: { number: 5 } });
  });

  it('gh missing: a PullRequestError that says what to install; with pullRequest on, the run is refused before it starts', async () => {
    const saved = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const error = await ghTransport('github.com')({ method: 'GET', path: 'repos/acme/app/pulls' }).then(() => undefined, (e: unknown) => e);
      expect((error as PullRequestError).kind).toBe('no-gh');
      expect((error as PullRequestError).hint).toMatch(/cli\.github\.com.*apt-get install gh.*gh auth login/);
      const config = configSchema.parse({ loop: { push: 'origin', pullRequest: true } });
      await expect(checkDeliveryConfig(config, {})).rejects.toThrow(/GitHub CLI \(gh\) is not installed/);
    } finally {
      process.env.PATH = saved;
    }
  });

  it('attack: a carriage return in an agent-steered text cannot end its code span and put live markdown (Closes #1, @mentions, links) in the PR body', () => {
    // The reviewer's reasons are steered by the agent's diff; a lone CR is a line ending in markdown.
    const evil = 'fine\r\rCloses #1 @acme/everyone [login](https://example.invalid) ![](https://example.invalid/t.png)\r\r';
    const body = pullRequestBody({ ...facts, review: `reject by rev: ${evil}`, reason: `stalled${evil}` });
    expect(body).not.toMatch(/\r/);
    const lines = body.split('\n');
    expect(lines.length).toBe(pullRequestBody(facts).split('\n').length);
    for (const line of lines.filter((l) => l.includes('Closes #1'))) expect(line).toMatch(/`[^`]*Closes #1[^`]*`/);
  });

  it('owner/repo from GitHub remote URLs; other remotes are not GitHub', () => {
    expect(githubRepoOf('git@github.com:acme/app.git')).toEqual(repo);
    expect(githubRepoOf('https://github.com/acme/app')).toEqual(repo);
    expect(githubRepoOf('ssh://git@github.com/acme/app.git')).toEqual(repo);
    expect(githubRepoOf('file:///tmp/remote.git')).toBeUndefined();
    expect(githubRepoOf('https://gitlab.com/acme/app.git')).toBeUndefined();
  });
});
