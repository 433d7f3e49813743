// What a loop on a cluster is, written once: the Swarm ServiceSpec of its replicated job and the
// Kubernetes Job that would run the same runner (docs/scaling.md). Pure functions of a JobPlan.
import { LABELS, resourceLabels } from '../docker/labels.js';

/** The node label a node carries when it has the runner image, the model and the work folder. */
export const NODE_LABEL = 'loopbox.model';
export const NODE_LABEL_VALUE = 'ready';
export const PLACEMENT = `node.labels.${NODE_LABEL}==${NODE_LABEL_VALUE}`;
/** A node that declares this generic resource (daemon.json node-generic-resources) gets at most that many loops. */
export const SLOT_RESOURCE = 'loopbox-slot';
export const DOCKER_SOCKET = '/var/run/docker.sock';

export interface JobPlan {
  runId: string;
  /** The task's name (its branch is loopbox/<task>). */
  task: string;
  /** The task file's path inside the repository. */
  taskPath: string;
  /** Image reference the service runs: the runner pinned by image id (no registry pull). */
  image: string;
  /** The runner clones from and pushes to this URL. */
  gitUrl: string;
  /** The commit the task branch starts from (the host's HEAD). */
  baseCommit: string;
  workDir: string;
  /** loopbox.yaml as the host read it (YAML text; empty: defaults). */
  configYaml: string;
  /** Request one `loopbox-slot` generic resource (every labelled node declares it). */
  slotResource: boolean;
  /** Extra environment (LOOPBOX_IMAGE_TAG and the like, so the runner uses the same images). */
  env?: Record<string, string>;
  /** The Swarm secret holding the run's audit signing key (the host keeps the verifier key). */
  auditKeySecret?: { id: string; name: string } | undefined;
}

/** Where the runner finds the run's audit signing key (a Swarm secret, tmpfs). */
export const AUDIT_KEY_SECRET_FILE = 'loopbox-audit-key.pem';

export function serviceName(plan: Pick<JobPlan, 'runId' | 'task'>): string {
  // Service names: up to 63 characters of [A-Za-z0-9-].
  return `loopbox-${plan.runId}-${plan.task}`.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 63).replace(/-+$/, '');
}

export function jobEnv(plan: JobPlan): Record<string, string> {
  return {
    ...plan.env,
    LOOPBOX_JOB_RUN_ID: plan.runId,
    LOOPBOX_JOB_TASK: plan.task,
    LOOPBOX_JOB_TASK_PATH: plan.taskPath,
    LOOPBOX_JOB_GIT_URL: plan.gitUrl,
    LOOPBOX_JOB_BASE: plan.baseCommit,
    LOOPBOX_JOB_WORKDIR: plan.workDir,
    LOOPBOX_JOB_CONFIG: Buffer.from(plan.configYaml, 'utf8').toString('base64'),
  };
}

/** The Swarm ServiceSpec (Engine API 1.41) of one loop: a replicated job of one completion. */
export function runnerServiceSpec(plan: JobPlan, env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const labels = resourceLabels({ runId: plan.runId, role: 'runner', task: plan.task }, env);
  return {
    Name: serviceName(plan),
    Labels: labels,
    TaskTemplate: {
      ContainerSpec: {
        Image: plan.image,
        Labels: labels,
        Args: ['swarm', 'job'],
        Env: Object.entries(jobEnv(plan)).map(([k, v]) => `${k}=${v}`),
        // The node's engine socket goes into the runner only; the sandbox it starts never sees it.
        // The work folder is mounted at the same path, so the paths the runner hands the engine
        // for bind mounts (worktree, run folder) mean the same thing on the node.
        Mounts: [
          { Type: 'bind', Source: DOCKER_SOCKET, Target: DOCKER_SOCKET },
          { Type: 'bind', Source: plan.workDir, Target: plan.workDir },
        ],
        // SIGTERM: the loop winds down like Ctrl+C (work in progress committed and pushed).
        StopGracePeriod: 60_000_000_000,
        Init: true,
        Secrets: plan.auditKeySecret ? [{ SecretID: plan.auditKeySecret.id, SecretName: plan.auditKeySecret.name, File: { Name: AUDIT_KEY_SECRET_FILE, UID: '0', GID: '0', Mode: 0o400 } }] : [],
      },
      Placement: { Constraints: [PLACEMENT] },
      // A loop that failed is not run again behind the user's back; `--resume` places it again.
      RestartPolicy: { Condition: 'none', MaxAttempts: 0 },
      Resources: plan.slotResource ? { Reservations: { GenericResources: [{ DiscreteResourceSpec: { Kind: SLOT_RESOURCE, Value: 1 } }] } } : {},
    },
    Mode: { ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } },
  };
}

/**
 * The same loop as a Kubernetes batch/v1 Job (a design kept current, not a backend): one pod,
 * no retries, the node's Docker socket and work folder as hostPath volumes, placed by a node
 * label. `loopbox run --render k8s` prints it.
 */
export function k8sJobManifest(plan: JobPlan, env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const labels = Object.fromEntries(
    Object.entries(resourceLabels({ runId: plan.runId, role: 'runner', task: plan.task }, env)).map(([k, v]) => [k.replace(/^loopbox\./, 'loopbox.dev/'), v.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63)]),
  );
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: serviceName(plan).toLowerCase(), labels },
    spec: {
      backoffLimit: 0,
      ttlSecondsAfterFinished: 3600,
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: 'Never',
          nodeSelector: { [`loopbox.dev/${NODE_LABEL.replace(/^loopbox\./, '')}`]: NODE_LABEL_VALUE },
          containers: [
            {
              name: 'runner',
              image: plan.image,
              args: ['swarm', 'job'],
              env: Object.entries(jobEnv(plan)).map(([name, value]) => ({ name, value })),
              volumeMounts: [
                { name: 'docker-socket', mountPath: DOCKER_SOCKET },
                { name: 'work', mountPath: plan.workDir },
              ],
              resources: plan.slotResource ? { limits: { [`loopbox.dev/${SLOT_RESOURCE}`]: '1' } } : {},
            },
          ],
          terminationGracePeriodSeconds: 60,
          volumes: [
            { name: 'docker-socket', hostPath: { path: DOCKER_SOCKET, type: 'Socket' } },
            { name: 'work', hostPath: { path: plan.workDir, type: 'Directory' } },
          ],
        },
      },
    },
  };
}

export { LABELS };
