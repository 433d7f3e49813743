// `loopbox doctor`'s look at what delivery needs, when the config asks for it: `gh` installed and
// logged in (loop.pullRequest), the push remote known and answering (loop.push), the notify
// secret set (notify.secretEnv). Every check is bounded in time and read-only: ls-remote through
// the hardened runner, `gh --version` and `gh auth status`; nothing is pushed or sent.
import { execa } from 'execa';
import { LoopboxError, describe } from '../common/errors.js';
import type { Config } from '../config/schema.js';
import { GitError, git } from '../git/hardened.js';
import { notifySecret } from './notify.js';
import { GH_INSTALL_HINT } from './pull-request.js';
import { PushError, remoteUrl, userCredentialConfig } from './push.js';

export interface DeliveryCheck {
  /** `gh`, `push remote`, `notify secret`. */
  name: string;
  ok: boolean;
  /** What was found, one line. */
  detail: string;
  /** What to do, when not ok. */
  hint?: string;
}

export interface DeliveryCheckOptions {
  /** The user's repository (where the push remote is looked up). */
  repo: string;
  /** Where `gh` is looked for and the notify secret is read; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The longest any one check may take; default 15 s (and never more than loop.push.timeout). */
  timeoutMs?: number;
}

const firstLine = (text: string): string => text.trim().split('\n')[0] ?? '';

async function ghCheck(env: NodeJS.ProcessEnv, timeoutMs: number): Promise<DeliveryCheck> {
  const opts = { env: { ...env, GH_PROMPT_DISABLED: '1', GH_NO_UPDATE_NOTIFIER: '1' }, extendEnv: false, reject: false, timeout: timeoutMs, stdin: 'ignore' } as const;
  const version = await execa('gh', ['--version'], opts);
  if (version.exitCode !== 0) {
    const missing = (version.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
    return { name: 'gh', ok: false, detail: missing ? 'not installed (loop.pullRequest needs the GitHub CLI): install gh, then run `gh auth login`' : `\`gh --version\` failed: ${firstLine(String(version.stderr)) || describe(version.cause ?? version.exitCode)}`, hint: GH_INSTALL_HINT };
  }
  const auth = await execa('gh', ['auth', 'status'], opts);
  if (auth.exitCode !== 0) {
    const said = firstLine(String(auth.stderr)) || firstLine(String(auth.stdout));
    return { name: 'gh', ok: false, detail: `installed, not logged in: run \`gh auth login\`${auth.timedOut ? ' (`gh auth status` timed out)' : said ? ` (gh says: ${said})` : ''}`, hint: 'Run `gh auth login` as the user that runs loopbox, or set loop.pullRequest: false.' };
  }
  return { name: 'gh', ok: true, detail: `${firstLine(String(version.stdout))}, logged in` };
}

async function remoteCheck(repo: string, remote: string, timeoutMs: number): Promise<DeliveryCheck> {
  let url: string;
  try {
    url = await remoteUrl(repo, remote);
  } catch (error) {
    return { name: 'push remote', ok: false, detail: describe(error).split('\n')[0] ?? '', ...(error instanceof PushError ? { hint: error.hint } : {}) };
  }
  const started = Date.now();
  try {
    const helpers = await userCredentialConfig(repo);
    // `--end-of-options`: the URL is never read as an option. HEAD only: the answer is small.
    const out = await git(['ls-remote', '--symref', '--end-of-options', url, 'HEAD'], { cwd: repo, transport: { credentialConfig: helpers }, timeoutMs });
    const head = /^ref: refs\/heads\/(\S+)\tHEAD$/m.exec(out)?.[1];
    return { name: 'push remote', ok: true, detail: `${remote === url ? url : `${remote} (${url})`} answers in ${Date.now() - started} ms${head ? `, default branch ${head}` : ''}` };
  } catch (error) {
    const timedOut = error instanceof GitError && (error.message.split('\n')[0] ?? '').endsWith('timed out');
    const why = error instanceof GitError ? (error.failure.stderrTail.trim().split('\n')[0] ?? '') : describe(error).split('\n')[0];
    return {
      name: 'push remote',
      ok: false,
      detail: `${remote === url ? url : `${remote} (${url})`} ${timedOut ? `did not answer within ${timeoutMs} ms` : 'cannot be reached'}${why ? `: ${why}` : ''}`,
      hint: 'Check the URL, the network and your credentials with `git ls-remote <url>` from a terminal; loopbox pushes with your ssh agent or the credential helpers of your global git config.',
    };
  }
}

/** The delivery checks the config calls for; an empty list when it configures no delivery. */
export async function deliveryChecks(config: Config, options: DeliveryCheckOptions): Promise<DeliveryCheck[]> {
  const env = options.env ?? process.env;
  const limit = options.timeoutMs ?? 15_000;
  const checks: DeliveryCheck[] = [];
  if (config.loop.pullRequest) checks.push(await ghCheck(env, limit));
  if (config.loop.push) checks.push(await remoteCheck(options.repo, config.loop.push.remote, Math.min(limit, config.loop.push.timeout)));
  if (config.notify?.secretEnv) {
    try {
      notifySecret(config.notify, env);
      checks.push({ name: 'notify secret', ok: true, detail: `${config.notify.secretEnv} is set` });
    } catch (error) {
      checks.push({ name: 'notify secret', ok: false, detail: describe(error).split('\n')[0] ?? '', ...(error instanceof LoopboxError && error.hint ? { hint: error.hint } : {}) });
    }
  }
  return checks;
}
