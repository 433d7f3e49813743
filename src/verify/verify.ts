// Verification in a separate, clean container: no network at all, the worktree's files copied
// in (tar; `.git` left out; symlinks kept as links, never dereferenced), the command from the
// host's config, its own timeout. The agent's container is gone by then; nothing it started
// survives into this one.
import type { Readable } from 'node:stream';
import tar from 'tar-fs';
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

export interface VerifyOptions extends SandboxIdentity {
  image: string;
  command: string[];
  worktree: string;
  timeoutMs: number;
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
  /** The last lines of the command's output (stdout and stderr interleaved). */
  outputTail: string;
  report: ReportOutcome;
}

/** The worktree as a tar stream: `.git` at the top left out, links as links, owned by the verify uid. */
export function worktreeTar(dir: string): Readable {
  return tar.pack(dir, {
    ignore: (name) => {
      const rel = name.slice(dir.length).replace(/^\/+/, '');
      return rel === '.git' || rel.startsWith('.git/');
    },
    dereference: false,
    map: (header) => {
      header.uid = VERIFY_UID;
      header.gid = VERIFY_UID;
      return header;
    },
  }) as unknown as Readable;
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
    await docker.api.getContainer(id).putArchive(worktreeTar(options.worktree), { path: VERIFY_WORKDIR });
    const prepared = options.report && (await prepareReport(docker.api.getContainer(id), options.report, VERIFY_WORKDIR, VERIFY_UID));
    const output = new RecentLines(60);
    const streams = await docker.attach(id);
    streams.stdout.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    streams.stderr.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    const result = await docker.startAndWait(id, options.timeoutMs, options.signal);
    await streams.drained(1000);
    const report: ReportOutcome = options.report
      ? await collectReport(docker.api.getContainer(id), options.report, VERIFY_WORKDIR, prepared?.planted ?? false)
      : { kind: 'not-configured' };
    return {
      passed: result.exitCode === 0 && !result.timedOut && !options.signal?.aborted,
      exitCode: result.exitCode,
      timedOut: result.timedOut,
      durationMs: Date.now() - started,
      outputTail: output.toString(),
      report,
    };
  } finally {
    await docker.remove(id);
  }
}
