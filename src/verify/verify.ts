// Verification in a separate, clean container: no network at all, the files of the tree that
// gets committed, the command from the host's config, its own timeout, which covers the copy
// too. The agent's container is gone by then; nothing it started survives into this one, and
// each verify is a new container.
//
// The files come from a verify base (base.ts): a host directory written from git objects alone
// (never the worktree's file system, so what verify sees is exactly what is committed), kept per
// run and moved from tree to tree by the difference only. The container gets it read-only at
// /loopbox/base and, before the command, copies it into /workspace, a tmpfs of its own capped at
// verify.maxCopy (plus a page per entry): what the command writes there, or anywhere else in the
// container, goes with the container. The base is never written by a container.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, RecentLines } from '../common/errors.js';
import type { SandboxIdentity } from '../audit/record.js';
import type { DockerClient } from '../docker/client.js';
import { containerName, resourceLabels } from '../docker/labels.js';
import { deadline } from '../sandbox/specs.js';
import type { SandboxLimits } from '../sandbox/sandbox.js';
import { BaseTimeoutError, VerifyBase } from './base.js';
import type { ReportOutcome } from './accounting.js';
import { collectReport, prepareReport, reportPathIn } from './collect.js';
import { REPORT_DIR, type ReportSetting } from './presets.js';

/** In the report folder: the copy of a report the command wrote inside /workspace. */
const WORKSPACE_REPORT = '.from-workspace';
import { git } from '../git/hardened.js';

export const VERIFY_WORKDIR = '/workspace';
const VERIFY_UID = 1000;
/** Where the read-only base is mounted in the verify container. */
export const VERIFY_BASE_MOUNT = '/loopbox/base';
/** Exit status of the in-container copy failing (before the command ran). */
export const COPY_FAILED_EXIT = 125;
// Copies the base into the tmpfs /workspace, then runs the command there. `cp -R` copies
// symlinks as symlinks (it never follows one in the source) and takes modes from the source.
// /workspace is a tmpfs and goes when the container stops: a report written there (a relative
// report path) is copied, as it is (a link stays a link and is refused), to the report folder.
const COPY_SCRIPT = `cp -R ${VERIFY_BASE_MOUNT}/. ${'/workspace'}/ || { echo "loopbox: copying the tree into /workspace failed (verify.maxCopy?)" >&2; exit ${COPY_FAILED_EXIT}; }
cd /workspace && "$@"
rc=$?
if [ -n "\${LOOPBOX_REPORT_IN_WORKSPACE:-}" ] && [ -e "/workspace/\${LOOPBOX_REPORT_IN_WORKSPACE}" -o -L "/workspace/\${LOOPBOX_REPORT_IN_WORKSPACE}" ]; then
  cp -P "/workspace/\${LOOPBOX_REPORT_IN_WORKSPACE}" ${REPORT_DIR}/${WORKSPACE_REPORT} 2>/dev/null
fi
exit $rc`;
/** tmpfs rounds every file up to a page. */
const PAGE = 4096;
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
  /**
   * The run's verify base directory, kept between verifies so each one writes only what changed
   * since the last. Without it, a temporary base is built for this verify and removed after.
   */
  baseDir?: string | undefined;
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
  /** Of durationMs, the host's time bringing the verify base to the tree (the in-container copy is part of the run). */
  copyMs: number;
  /** The last lines of the command's output (stdout and stderr interleaved). */
  outputTail: string;
  report: ReportOutcome;
}

export async function runVerify(docker: DockerClient, options: VerifyOptions): Promise<VerifyResult> {
  const started = Date.now();
  const maxBytes = options.maxCopyBytes ?? DEFAULT_MAX_COPY_BYTES;
  const temporary = options.baseDir === undefined;
  const base = new VerifyBase(options.repo, options.baseDir ?? (await mkdtemp(path.join(tmpdir(), 'loopbox-verify-base-'))));
  try {
    let entries: number;
    try {
      // verify.timeout covers the copy too.
      entries = (await base.update(options.tree, { maxBytes, deadline: started + options.timeoutMs })).entries;
    } catch (error) {
      const copyMs = Date.now() - started;
      return {
        passed: false,
        exitCode: -1,
        timedOut: error instanceof BaseTimeoutError,
        durationMs: copyMs,
        copyMs,
        outputTail: `loopbox: the verify copy failed: ${describe(error)}\n`,
        report: options.report ? { kind: 'missing', detail: 'the verify copy failed' } : { kind: 'not-configured' },
      };
    }
    const copyMs = Date.now() - started;
    return await runContainer(docker, options, base.root, maxBytes + (entries + 1) * PAGE, started, copyMs);
  } finally {
    if (temporary) await base.dispose();
  }
}

async function runContainer(docker: DockerClient, options: VerifyOptions, baseRoot: string, workspaceBytes: number, started: number, copyMs: number): Promise<VerifyResult> {
  const limit = deadline(['sh', '-c', COPY_SCRIPT, 'loopbox-verify', ...options.command], `${VERIFY_UID}:${VERIFY_UID}`, Math.max(1, options.timeoutMs - copyMs));
  const id = await docker.createContainer({
    name: containerName(options, 'verify'),
    image: options.image,
    entrypoint: limit.entrypoint,
    cmd: limit.cmd,
    labels: resourceLabels({ ...options, role: 'verify' }),
    networkMode: 'none',
    user: limit.user,
    capAdd: limit.capAdd,
    workingDir: '/',
    env: { HOME: '/tmp/home', CI: 'true', ...(reportRel(options) ? { LOOPBOX_REPORT_IN_WORKSPACE: reportRel(options)! } : {}) },
    capDrop: ['ALL'],
    securityOpt: ['no-new-privileges'],
    binds: [{ host: baseRoot, container: VERIFY_BASE_MOUNT, readOnly: true }],
    tmpfs: {
      '/tmp': 'rw,nosuid,nodev,size=512m',
      // The tree and whatever the command writes next to it: bounded, and gone with the container.
      [VERIFY_WORKDIR]: `rw,exec,nosuid,nodev,size=${workspaceBytes},uid=${VERIFY_UID},gid=${VERIFY_UID},mode=0755`,
    },
    pidsLimit: options.limits.pids,
    // tmpfs pages count against the container's memory: the tree gets room on top of the limit.
    memoryBytes: options.limits.memoryBytes + workspaceBytes,
    nanoCpus: Math.round(options.limits.cpus * 1e9),
    init: true,
  });
  try {
    // A report the tree brings along (the agent committed one at the report path) is refused:
    // the files come from the tree, so the tree says whether it is there.
    const prepared = options.report && (await prepareReport(docker, id, options.report, await inTree(options, options.report), VERIFY_UID));
    const output = new RecentLines(60);
    const streams = await docker.attach(id);
    streams.stdout.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    streams.stderr.on('data', (c: Buffer) => output.push(c.toString('utf8')));
    const result = await docker.startAndWait(id, Math.max(1, options.timeoutMs - (Date.now() - started)), options.signal);
    await streams.drained(1000);
    const report: ReportOutcome = options.report
      ? await collectReport(docker, id, options.report, VERIFY_WORKDIR, prepared?.planted ?? false, reportRel(options) ? `${REPORT_DIR}/${WORKSPACE_REPORT}` : undefined)
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

/** The report path relative to /workspace, when it lies inside it. */
function reportRel(options: VerifyOptions): string | undefined {
  if (!options.report) return undefined;
  const rel = path.posix.relative(VERIFY_WORKDIR, reportPathIn(options.report, VERIFY_WORKDIR));
  return rel === '' || rel.startsWith('..') || path.posix.isAbsolute(rel) ? undefined : rel;
}

/** Whether the report path lies in /workspace and the verified tree has an entry there. */
async function inTree(options: VerifyOptions, setting: ReportSetting): Promise<boolean> {
  const rel = reportRel({ ...options, report: setting });
  if (!rel) return false;
  const out = await git(['ls-tree', '-z', '--name-only', options.tree, '--', rel], { cwd: options.repo });
  return out.length > 0;
}
