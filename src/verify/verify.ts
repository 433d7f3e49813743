// Verification in a separate, clean container: no network at all, the files of the tree that
// gets committed copied in (a tar made from git objects, see git/archive.ts: never the worktree's
// file system, so what verify sees is exactly what is committed), the command from the host's
// config, its own timeout, which covers the copy too. The agent's container is gone by then;
// nothing it started survives into this one, and each verify is a new container.
import { treeArchive } from '../git/archive.js';
import { RecentLines } from '../common/errors.js';
import type { DockerClient } from '../docker/client.js';
import { resourceLabels } from '../docker/labels.js';
import { containerName, deadline, type SandboxIdentity } from '../sandbox/specs.js';
import type { SandboxLimits } from '../sandbox/sandbox.js';
import type { ReportOutcome } from './accounting.js';
import { collectReport, prepareReport } from './collect.js';
import type { ReportSetting } from './presets.js';

export const VERIFY_WORKDIR = '/workspace';
const VERIFY_UID = 1000;
export const DEFAULT_MAX_COPY_BYTES = 2 * 1024 ** 3;

export interface VerifyOptions extends SandboxIdentity {
  image: string;
  command: string[];
  /** The repository and the tree (or commit) whose files are verified. */
  repo: string;
  tree: string;
  /** Covers the copy and the command. */
  timeoutMs: number;
  /** The copy is refused past this many bytes (default 2 GiB). */
  maxCopyBytes?: number;
  limits: SandboxLimits;
  signal?: AbortSignal | undefined;
  /** Where the test runner writes its report; read back and parsed on the host after the run. */
  report?: ReportSetting | undefined;
}

export interface VerifyResult {
  passed: boolean;
  exitCode: number;
  timedOut: boolean;
  durationMs: number;
  /** Of durationMs, the time spent copying the files into the container. */
  copyMs: number;
  /** The last lines of the command's output (stdout and stderr interleaved). */
  outputTail: string;
  report: ReportOutcome;
}

export async function runVerify(docker: DockerClient, options: VerifyOptions): Promise<VerifyResult> {
  const started = Date.now();
  const limit = deadline(options.command, `${VERIFY_UID}:${VERIFY_UID}`, options.timeoutMs);
  const id = await docker.createContainer({
    name: containerName(options, 'verify'),
    image: options.image,
    entrypoint: limit.entrypoint,
    cmd: limit.cmd,
    labels: resourceLabels({ ...options, role: 'verify' }),
    networkMode: 'none',
    user: limit.user,
    capAdd: limit.capAdd,
    workingDir: VERIFY_WORKDIR,
    env: { HOME: '/tmp/home', CI: 'true' },
    capDrop: ['ALL'],
    securityOpt: ['no-new-privileges'],
    tmpfs: { '/tmp': 'rw,nosuid,nodev,size=512m' },
    pidsLimit: options.limits.pids,
    memoryBytes: options.limits.memoryBytes,
    nanoCpus: Math.round(options.limits.cpus * 1e9),
    init: true,
  });
  try {
    const copyStart = Date.now();
    const copied = await copyTree(docker, id, options);
    const copyMs = Date.now() - copyStart;
    if (copied !== 'ok') {
      return { passed: false, exitCode: -1, timedOut: copied === 'timed out', durationMs: Date.now() - started, copyMs, outputTail: `loopbox: the copy into the verify container failed: ${copied}\n`, report: options.report ? { kind: 'missing', detail: 'the copy into the verify container failed' } : { kind: 'not-configured' } };
    }
    const prepared = options.report && (await prepareReport(docker.api.getContainer(id), options.report, VERIFY_WORKDIR, VERIFY_UID));
    const output = new RecentLines(60);
    const streams = await docker.attach(id);
    streams.stdout.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    streams.stderr.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    // verify.timeout covers the copy too.
    const result = await docker.startAndWait(id, Math.max(1, options.timeoutMs - (Date.now() - started)), options.signal);
    await streams.drained(1000);
    const report: ReportOutcome = options.report
      ? await collectReport(docker.api.getContainer(id), options.report, VERIFY_WORKDIR, prepared?.planted ?? false)
      : { kind: 'not-configured' };
    return {
      passed: result.exitCode === 0 && !result.timedOut && !options.signal?.aborted,
      exitCode: result.exitCode,
      timedOut: result.timedOut,
      durationMs: Date.now() - started,
      copyMs,
      outputTail: output.toString(),
      report,
    };
  } finally {
    await docker.remove(id);
  }
}

/** Streams the tree into the container; 'ok', 'timed out' (verify.timeout), or why it failed. */
async function copyTree(docker: DockerClient, id: string, options: VerifyOptions): Promise<string> {
  const archive = treeArchive(options.repo, options.tree, {
    uid: VERIFY_UID,
    gid: VERIFY_UID,
    maxBytes: options.maxCopyBytes ?? DEFAULT_MAX_COPY_BYTES,
    prefix: VERIFY_WORKDIR.slice(1),
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => {
      archive.destroy(new Error('timed out'));
      resolve('timed out');
    }, options.timeoutMs);
  });
  // A failed archive (too large, git error) ends the upload with that error.
  const failed = new Promise<string>((resolve) => archive.once('error', (error: Error) => resolve(error.message)));
  try {
    return await Promise.race([
      docker.api
        .getContainer(id)
        .putArchive(archive, { path: '/' })
        .then(
          () => 'ok',
          (error: unknown) => (error instanceof Error ? error.message : String(error)),
        ),
      failed,
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
    archive.destroy();
  }
}
