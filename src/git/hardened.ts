// The one way loopbox runs git on the host. The worktree it commits from was written by an
// untrusted agent, so every git call goes through `git()` below, which turns off everything in
// git that can run a program or reach the network on its own: hooks, fsmonitor, external diff,
// submodule recursion, transports. Callers use plumbing only and never point git at
// agent-controlled config (the worktree's own files are read by node, see worktree.ts).
import { lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { execa } from 'execa';
import { LoopboxError, indent, type ErrorContext } from '../common/errors.js';

export interface GitFailure {
  args: readonly string[];
  cwd: string;
  exitCode: number | undefined;
  signal: string | undefined;
  stderrTail: string;
  /** Killed by GitOptions.signal, not failed on its own. */
  cancelled?: boolean;
}

/** A git command that failed: which one, where, its exit code and the end of its stderr. */
export class GitError extends LoopboxError {
  readonly failure: GitFailure;
  constructor(what: string, failure: GitFailure, context: ErrorContext = {}) {
    const parts = [what, `  command: git ${failure.args.join(' ')}`, `  cwd: ${failure.cwd}`];
    if (failure.exitCode !== undefined) parts.push(`  exit code: ${failure.exitCode}`);
    if (failure.signal) parts.push(`  signal: ${failure.signal}`);
    if (failure.stderrTail) parts.push('  stderr:', indent(failure.stderrTail));
    super(parts.join('\n'), context);
    this.failure = failure;
  }
}

export interface GitOptions {
  /** Always the repository (or its admin dir), never the agent-writable worktree. */
  cwd: string;
  /** Bytes or text fed to git's stdin. */
  input?: string | Uint8Array;
  /** Extra environment, e.g. GIT_INDEX_FILE or author identity. Merged after hardening. */
  env?: Record<string, string>;
  /** Exit codes that are answers, not failures (e.g. 1 from `rev-parse --verify -q`). */
  okExitCodes?: readonly number[];
  /** Hint attached to the GitError when the command fails. */
  hint?: string;
  timeoutMs?: number;
  /** Kills git when it fires (a Ctrl+C during delivery); the GitError then says "cancelled". */
  signal?: AbortSignal | undefined;
  /**
   * Only `git push`/`ls-remote` of deliver/push.ts: lets git reach a remote over file, git, ssh,
   * http and https (never ext:: or fd::, which run programs), with these credential settings
   * (`credential.helper=…` or `credential.<url>.helper=…`, from the user's own global config).
   */
  transport?: { credentialConfig: readonly string[] };
}

export interface GitResult<T extends string | Uint8Array = string> {
  stdout: T;
  exitCode: number;
}

// Each of these is a real git 2.39 setting; `-c` on the command line beats every config file,
// and git passes `-c` values on to the git subprocesses it spawns itself (GIT_CONFIG_PARAMETERS),
// e.g. the `git update-ref` that `git worktree add` runs.
function hardeningConfig(hooksDir: string): string[] {
  return [
    // No hook ever runs: post-checkout, reference-transaction, post-commit... all live in an
    // empty directory loopbox owns (CVE-2024-32002 / CVE-2024-32004 style hook planting).
    `core.hooksPath=${hooksDir}`,
    // core.fsmonitor may name a program that git runs on every index refresh.
    'core.fsmonitor=false',
    'core.untrackedCache=false',
    // An empty external diff makes any diff that would use one fail loudly ("cannot run")
    // instead of running a configured program; loopbox runs no diffs, its own code compares trees.
    'diff.external=',
    'submodule.recurse=false',
    // No transport at all: loopbox never fetches or pushes from this code path.
    'protocol.allow=never',
    // commit-tree honours commit.gpgSign from the repo config; signing would prompt or hang.
    'commit.gpgSign=false',
    // Plumbing does not auto-gc, but keep it off so nothing slow or hook-driven starts.
    'gc.auto=0',
    'maintenance.auto=false',
    // Never ask for credentials or run a credential helper.
    'credential.helper=',
  ];
}

let hooksDirPath: string | undefined;

/**
 * The empty directory used as core.hooksPath: one per user under the OS tmpdir, made 0500 so
 * nothing is dropped in by mistake, and checked on first use (a real directory, ours, not
 * writable by others, empty) so a directory someone else planted there is refused, not trusted.
 */
export function emptyHooksDir(): string {
  if (hooksDirPath) return hooksDirPath;
  const uid = process.getuid?.() ?? 0;
  const dir = path.join(tmpdir(), `loopbox-nohooks-${uid}`);
  try {
    mkdirSync(dir, { mode: 0o500 });
  } catch (error) {
    if (!(error instanceof Error && 'code' in error && error.code === 'EEXIST')) throw error;
  }
  const stats = lstatSync(dir);
  const problem = !stats.isDirectory()
    ? 'is not a directory'
    : process.getuid && stats.uid !== uid
      ? `belongs to uid ${stats.uid}`
      : (stats.mode & 0o022) !== 0
        ? 'is writable by others'
        : readdirSync(dir).length > 0
          ? 'is not empty'
          : undefined;
  if (problem) {
    throw new LoopboxError(`The empty hooks directory ${dir} ${problem}`, {
      hint: `Remove ${dir}; loopbox makes it again, empty, to disable git hooks.`,
    });
  }
  hooksDirPath = dir;
  return dir;
}

/**
 * The environment for git: the parent's minus every GIT_* variable (GIT_DIR, GIT_WORK_TREE,
 * GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS, GIT_EXTERNAL_DIFF, GIT_SSH_COMMAND... would each redirect
 * or extend what git does), plus the variables that shut out system and user config.
 */
export function hardenedEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('GIT_')) continue;
    env[key] = value;
  }
  Object.assign(env, {
    // System and global config could define hooks, filters, aliases or an fsmonitor.
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_TERMINAL_PROMPT: '0',
    // Read-only commands must not take locks or rewrite the index as a side effect.
    GIT_OPTIONAL_LOCKS: '0',
    // Paths loopbox passes are paths, never pathspec magic like `:(glob)` or `:!x`.
    GIT_LITERAL_PATHSPECS: '1',
    GIT_EDITOR: 'false',
    GIT_PAGER: 'cat',
    LC_ALL: 'C',
  });
  return { ...env, ...extra };
}

/**
 * What a transport call adds after the hardening: `protocol.<name>.allow` beats `protocol.allow`,
 * so only these transports open (ext:: and fd:: stay `never`: they run programs, CVE-2017-1000117
 * family); the credential helpers come after the empty `credential.helper=` that reset the list.
 */
function transportConfig(transport: NonNullable<GitOptions['transport']>): string[] {
  const settings = ['file', 'git', 'ssh', 'http', 'https'].map((p) => `protocol.${p}.allow=always`);
  for (const setting of transport.credentialConfig) {
    if (/^credential\.(.+\.)?helper=/.test(setting)) settings.push(setting);
  }
  return settings;
}

/** The argv prefix every git call gets: `--no-pager` and the `-c` hardening settings. */
export function hardenedArgs(args: readonly string[], transport?: GitOptions['transport']): string[] {
  const prefix = ['--no-pager'];
  for (const setting of hardeningConfig(emptyHooksDir())) prefix.push('-c', setting);
  if (transport) for (const setting of transportConfig(transport)) prefix.push('-c', setting);
  return [...prefix, ...args];
}

async function runGit<E extends 'utf8' | 'buffer'>(
  args: readonly string[],
  options: GitOptions,
  encoding: E,
): Promise<GitResult<E extends 'utf8' ? string : Uint8Array>> {
  const result = await execa('git', hardenedArgs(args, options.transport), {
    cwd: options.cwd,
    env: hardenedEnv(options.env),
    extendEnv: false,
    input: options.input,
    // No stdin unless we feed it: git must never wait on a terminal.
    stdin: options.input === undefined ? 'ignore' : 'pipe',
    encoding: encoding === 'utf8' ? 'utf8' : 'buffer',
    stripFinalNewline: false,
    reject: false,
    timeout: options.timeoutMs ?? 120_000,
    ...(options.signal ? { cancelSignal: options.signal } : {}),
    maxBuffer: 1024 * 1024 * 1024,
  });
  const exitCode = result.exitCode;
  const ok = exitCode === 0 || (exitCode !== undefined && (options.okExitCodes ?? []).includes(exitCode));
  if (!ok) {
    const stderr = typeof result.stderr === 'string' ? result.stderr : Buffer.from(result.stderr).toString('utf8');
    throw new GitError(
      result.timedOut ? `git ${args[0] ?? ''} timed out` : result.isCanceled ? `git ${args[0] ?? ''} was cancelled` : `git ${args[0] ?? ''} failed`,
      {
        args,
        cwd: options.cwd,
        exitCode,
        signal: result.signal ?? undefined,
        stderrTail: stderr.trimEnd().split('\n').slice(-20).join('\n'),
        ...(result.isCanceled ? { cancelled: true } : {}),
      },
      { hint: options.hint, cause: result.cause },
    );
  }
  return { stdout: result.stdout as E extends 'utf8' ? string : Uint8Array, exitCode: exitCode ?? 0 };
}

/** Runs hardened git and returns stdout as text (final newline kept; use `lines()`/trim). */
export async function git(args: readonly string[], options: GitOptions): Promise<string> {
  return (await runGit(args, options, 'utf8')).stdout;
}

/** Runs hardened git and returns stdout as raw bytes (blob contents are not text). */
export async function gitBytes(args: readonly string[], options: GitOptions): Promise<Buffer> {
  const { stdout } = await runGit(args, options, 'buffer');
  return Buffer.from(stdout.buffer, stdout.byteOffset, stdout.byteLength);
}

/** Runs hardened git where some non-zero exit codes are answers; returns stdout and the code. */
export async function gitStatus(args: readonly string[], options: GitOptions): Promise<GitResult> {
  return runGit(args, options, 'utf8');
}

export interface GitStreamOptions {
  /** Always the repository, never the agent-writable worktree. */
  cwd: string;
  env?: Record<string, string>;
  timeoutMs?: number;
}

/** A hardened git process whose stdin and stdout are streams (for output too large to buffer). */
export interface GitStream {
  stdin: Writable;
  stdout: Readable;
  /**
   * Waits for git to end. A GitError (command, cwd, exit code, stderr tail) if it failed; a git
   * ended by a signal after its reader stopped early (stdout destroyed) is not a failure.
   */
  done(): Promise<void>;
}

/**
 * Starts hardened git with piped stdin and stdout, which the caller writes and reads itself (a
 * `cat-file --batch` fed and read in chunks, a `fast-import` fed blob by blob). stdin stays open
 * until the caller ends it; a caller that never writes ends it at once.
 */
export function gitStream(args: readonly string[], options: GitStreamOptions): GitStream {
  const proc = execa('git', hardenedArgs(args), {
    cwd: options.cwd,
    env: hardenedEnv(options.env),
    extendEnv: false,
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    encoding: 'buffer',
    reject: false,
    timeout: options.timeoutMs ?? 600_000,
  });
  return {
    stdin: proc.stdin,
    stdout: proc.stdout,
    done: async () => {
      const result = await proc;
      if (result.exitCode === 0 || (result.isTerminated && !result.timedOut)) return;
      throw new GitError(result.timedOut ? `git ${args[0] ?? ''} timed out` : `git ${args[0] ?? ''} failed`, {
        args,
        cwd: options.cwd,
        exitCode: result.exitCode,
        signal: result.signal ?? undefined,
        stderrTail: Buffer.from(result.stderr).toString('utf8').trimEnd().split('\n').slice(-20).join('\n'),
      });
    },
  };
}

/** Splits NUL-terminated `-z` output. */
export function splitZ(output: string): string[] {
  const parts = output.split('\0');
  if (parts.at(-1) === '') parts.pop();
  return parts;
}

/** The commit a revision names, or undefined when it names none (`rev-parse --verify -q`). */
export async function resolveCommit(cwd: string, rev: string): Promise<string | undefined> {
  // `--end-of-options` so a revision can never be read as an option (CVE-2018-17456 family).
  const { stdout, exitCode } = await gitStatus(['rev-parse', '--verify', '-q', '--end-of-options', `${rev}^{commit}`], {
    cwd,
    okExitCodes: [1, 128],
  });
  return exitCode === 0 ? stdout.trim() : undefined;
}

/** The commit a revision names; a LoopboxError when it names none. */
export async function revParse(cwd: string, rev: string): Promise<string> {
  const commit = await resolveCommit(cwd, rev);
  if (!commit) throw new LoopboxError(`${rev} does not name a commit in ${cwd}`);
  return commit;
}
