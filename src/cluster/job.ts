// Inside the runner container on a Swarm node (`loopbox swarm job`, the image's command): clone
// the repository from the job's git URL into the node's work folder, run the one loop there with
// the node's engine and model exactly as `loopbox run` does, then push the task branch and the
// run's artifacts (a commit whose tree is the run folder) back to the same URL.
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ConfigError, describe } from '../common/errors.js';
import { isSafeName } from '../common/ids.js';
import { runDir } from '../common/paths.js';
import { parseConfig } from '../config/load.js';
import type { DockerClient } from '../docker/client.js';
import { type LoopEvent, type LoopSummary, runLoop } from '../loop/loop.js';
import { writeReport } from '../report/report.js';
import { packageVersion } from '../common/version.js';
import { git, runRef, stopRequested, taskBranch } from './exchange.js';
import { AUDIT_KEY_SECRET_FILE } from './spec.js';

export interface JobSpec {
  runId: string;
  task: string;
  taskPath: string;
  gitUrl: string;
  baseCommit: string;
  workDir: string;
  configYaml: string;
}

/** The job's description from the environment the service spec set (spec.ts jobEnv). */
export function readJobEnv(env: NodeJS.ProcessEnv = process.env): JobSpec {
  const need = (name: string): string => {
    const value = env[name];
    if (!value) throw new ConfigError(`${name} is not set: \`loopbox swarm job\` runs inside the runner image, started by \`loopbox run --swarm\`.`);
    return value;
  };
  const spec: JobSpec = {
    runId: need('LOOPBOX_JOB_RUN_ID'),
    task: need('LOOPBOX_JOB_TASK'),
    taskPath: need('LOOPBOX_JOB_TASK_PATH'),
    gitUrl: need('LOOPBOX_JOB_GIT_URL'),
    baseCommit: need('LOOPBOX_JOB_BASE'),
    workDir: need('LOOPBOX_JOB_WORKDIR'),
    configYaml: Buffer.from(env.LOOPBOX_JOB_CONFIG ?? '', 'base64').toString('utf8'),
  };
  if (!isSafeName(spec.runId) || !isSafeName(spec.task)) throw new ConfigError(`Bad run id or task name in the job: ${spec.runId} / ${spec.task}`);
  if (!/^[0-9a-f]{40,64}$/.test(spec.baseCommit)) throw new ConfigError(`LOOPBOX_JOB_BASE is not a commit id: ${spec.baseCommit}`);
  if (!path.isAbsolute(spec.workDir)) throw new ConfigError(`LOOPBOX_JOB_WORKDIR must be absolute: ${spec.workDir}`);
  if (path.isAbsolute(spec.taskPath) || spec.taskPath.split('/').includes('..')) throw new ConfigError(`LOOPBOX_JOB_TASK_PATH must be inside the repository: ${spec.taskPath}`);
  return spec;
}

export interface JobResult {
  summary: LoopSummary | undefined;
  error: string | undefined;
  pushed: string[];
}

/** The file in the run folder that tells the host how the job ended. */
export const JOB_RESULT_FILE = 'swarm-job.json';

export async function runJob(docker: DockerClient, spec: JobSpec, options: { signal?: AbortSignal; onEvent?: (e: LoopEvent) => void; env?: NodeJS.ProcessEnv } = {}): Promise<JobResult> {
  const env = options.env ?? process.env;
  const base = path.join(spec.workDir, spec.runId);
  const repo = path.join(base, 'repo');
  // Everything the loop writes (state, worktree, verify base, temp files) lies under the work
  // folder, which is the same path on the node: the engine can bind-mount it.
  env.LOOPBOX_STATE_DIR = path.join(base, 'state');
  env.TMPDIR = path.join(base, 'tmp');
  await mkdir(env.TMPDIR, { recursive: true });
  if (!existsSync(path.join(repo, '.git'))) {
    await mkdir(repo, { recursive: true });
    await git(['init', '--quiet', repo]);
  }
  await git(['fetch', '--quiet', '--update-head-ok', spec.gitUrl, `+refs/heads/${taskBranch(spec.task)}:refs/heads/${taskBranch(spec.task)}`, '+refs/loopbox/base:refs/loopbox/base'], repo, 300_000).catch(async () => {
    // No task branch yet on the remote: the base alone.
    await git(['fetch', '--quiet', spec.gitUrl, '+refs/loopbox/base:refs/loopbox/base'], repo, 300_000);
  });
  await git(['-c', 'advice.detachedHead=false', 'checkout', '--quiet', '--detach', spec.baseCommit], repo);
  await git(['config', 'user.name', 'loopbox runner'], repo);
  await git(['config', 'user.email', 'runner@loopbox.invalid'], repo);

  // The run's audit signing key comes from the host as a Swarm secret: the loop signs its
  // checkpoints with it, the host verifies with the public half it kept. It is removed from the
  // node's disk when the loop ends, and never pushed (it lies beside runs/, not in the run folder).
  const secret = path.join('/run/secrets', AUDIT_KEY_SECRET_FILE);
  const keyFile = path.join(env.LOOPBOX_STATE_DIR, 'audit-key.pem');
  if (existsSync(secret)) {
    await mkdir(env.LOOPBOX_STATE_DIR, { recursive: true });
    await copyFile(secret, keyFile);
    await chmod(keyFile, 0o600);
  }
  // `loopbox swarm stop` (or Ctrl+C on the host) pushes a stop ref: Swarm itself does not
  // signal the container of a removed job, so the runner looks for it, like a local loop's stop file.
  const stop = new AbortController();
  const poll = setInterval(() => {
    void stopRequested(spec.gitUrl, spec.runId).then(
      (yes) => {
        if (yes) stop.abort(new Error('stop requested by the host'));
      },
      () => undefined,
    );
  }, 3_000);
  let summary: LoopSummary | undefined;
  let error: string | undefined;
  try {
    const config = parseConfig(spec.configYaml.trim() ? parseYaml(spec.configYaml) : {}, 'the job\'s loopbox.yaml');
    summary = await runLoop(docker, { repo, taskFile: path.join(repo, spec.taskPath), config, runId: spec.runId, trigger: 'swarm', signal: AbortSignal.any([stop.signal, ...(options.signal ? [options.signal] : [])]), onEvent: options.onEvent });
  } catch (e) {
    error = describe(e);
  } finally {
    clearInterval(poll);
  }
  const dir = runDir(spec.runId, env);
  await mkdir(dir, { recursive: true });
  if (summary && summary.iterations > 0) await writeReport(spec.runId, { version: packageVersion(), env }).catch((e: unknown) => (error ??= `report: ${describe(e)}`));
  await writeFile(path.join(dir, JOB_RESULT_FILE), `${JSON.stringify({ summary, error, node: process.env.LOOPBOX_NODE ?? null }, null, 2)}\n`);
  await rm(keyFile, { force: true });
  const pushed = await pushResults(repo, spec, dir);
  return { summary, error, pushed };
}

/** A commit of the run folder (its own index, so the clone's index is untouched) and the push. */
async function pushResults(repo: string, spec: JobSpec, dir: string): Promise<string[]> {
  const index = path.join(path.dirname(repo), 'artifacts.index');
  const gitEnv = { GIT_INDEX_FILE: index, GIT_WORK_TREE: dir };
  const { execa } = await import('execa');
  const plumbing = async (args: string[]): Promise<string> => (await execa('git', ['-c', 'core.hooksPath=/dev/null', ...args], { cwd: repo, env: gitEnv })).stdout.trim();
  await plumbing(['add', '--all', '--force', '.']);
  const tree = await plumbing(['write-tree']);
  const commit = await plumbing(['commit-tree', tree, '-m', `loopbox run ${spec.runId} (${spec.task}): artifacts`]);
  const refspecs = [`${commit}:${runRef(spec.runId)}`];
  const hasBranch = await git(['rev-parse', '--verify', '--quiet', `refs/heads/${taskBranch(spec.task)}`], repo).then(
    () => true,
    () => false,
  );
  if (hasBranch) refspecs.unshift(`refs/heads/${taskBranch(spec.task)}:refs/heads/${taskBranch(spec.task)}`);
  await git(['push', '--quiet', spec.gitUrl, ...refspecs], repo, 300_000);
  return refspecs.map((r) => r.split(':')[1]!);
}
