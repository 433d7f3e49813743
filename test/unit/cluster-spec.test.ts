// The swarm job and its Kubernetes equivalent, checked without an engine: the Job manifest that
// `loopbox run --render k8s` prints is validated against the Kubernetes schema (kubernetes-models,
// offline), and the Swarm ServiceSpec carries the placement, mounts and labels the design says.
import { Job } from 'kubernetes-models/batch/v1/Job';
import { describe, expect, it } from 'vitest';
import { DOCKER_SOCKET, type JobPlan, PLACEMENT, SLOT_RESOURCE, k8sJobManifest, runnerServiceSpec, serviceName } from '../../src/cluster/spec.js';
import { parseConfig } from '../../src/config/load.js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { renderK8s } from '../../src/cluster/submit.js';
import { createExampleRepo } from '../../src/demo/example-repo.js';

interface PodSpec {
  nodeSelector: Record<string, string>;
  volumes: unknown[];
  containers: Array<{ resources: unknown }>;
}

interface ServiceSpec {
  Name: string;
  Mode: unknown;
  Labels: Record<string, string>;
  TaskTemplate: {
    RestartPolicy: { Condition: string };
    Placement: { Constraints: string[] };
    ContainerSpec: { Mounts: unknown[]; Env: string[] };
    Resources: { Reservations?: { GenericResources: unknown[] } };
  };
}

const plan: JobPlan = {
  runId: '20261208-000000-abcdef',
  task: 'fix-add',
  taskPath: 'tasks/fix-add.md',
  image: 'sha256:' + 'a'.repeat(64),
  gitUrl: 'git://10.0.0.5:9418/0123456789abcdef01234567.git',
  baseCommit: 'b'.repeat(40),
  workDir: '/var/lib/loopbox-swarm',
  configYaml: 'loop:\n  maxIterations: 3\n',
  slotResource: true,
};

describe('the Kubernetes Job of a loop (loopbox run --render k8s)', () => {
  it('validates against the Kubernetes batch/v1 Job schema', () => {
    const manifest = k8sJobManifest(plan);
    expect(() => new Job(manifest as never).validate()).not.toThrow();
    expect(manifest).toMatchObject({ apiVersion: 'batch/v1', kind: 'Job', spec: { backoffLimit: 0, template: { spec: { restartPolicy: 'Never' } } } });
  });

  it('a broken manifest is refused by the same validation (the check can fail)', () => {
    const manifest = k8sJobManifest(plan) as { spec: { template: { spec: { restartPolicy: string; containers: Array<Record<string, unknown>> } } } };
    manifest.spec.template.spec.containers[0]!.name = 42;
    expect(() => new Job(manifest as never).validate()).toThrow();
    const other = k8sJobManifest(plan) as { spec: { backoffLimit: unknown } };
    other.spec.backoffLimit = 'none';
    expect(() => new Job(other as never).validate()).toThrow();
  });

  it('mounts the Docker socket and the work folder at the same path, places on labelled nodes, one slot', () => {
    const m = k8sJobManifest(plan) as unknown as { spec: { template: { spec: PodSpec } } };
    const pod = m.spec.template.spec;
    expect(pod.nodeSelector).toEqual({ 'loopbox.dev/model': 'ready' });
    expect(pod.volumes).toEqual([
      { name: 'docker-socket', hostPath: { path: DOCKER_SOCKET, type: 'Socket' } },
      { name: 'work', hostPath: { path: plan.workDir, type: 'Directory' } },
    ]);
    expect(pod.containers[0]!.resources).toEqual({ limits: { [`loopbox.dev/${SLOT_RESOURCE}`]: '1' } });
  });
});

describe('loopbox run --render k8s on a repository', () => {
  it('renders one valid Job per task, for the committed HEAD, and refuses a task file that is not committed', async () => {
    const repo = await mkdtemp(path.join(tmpdir(), 'lbx-render-'));
    try {
      await createExampleRepo(repo);
      const head = (await execa('git', ['rev-parse', 'HEAD'], { cwd: repo })).stdout;
      const files = [path.join(repo, 'tasks', 'fix-add.md')];
      const docs = await renderK8s({ repo, files, config: parseConfig({}), configYaml: '', imageRef: 'loopbox/runner:0.1.0', gitUrl: 'git://10.0.0.5/r.git' });
      expect(docs).toHaveLength(1);
      expect(() => new Job(docs[0] as never).validate()).not.toThrow();
      expect(JSON.stringify(docs[0])).toContain(head);
      await writeFile(path.join(repo, 'tasks', 'new.md'), '# New\n\n## Goal\nx\n');
      await expect(renderK8s({ repo, files: [path.join(repo, 'tasks', 'new.md')], config: parseConfig({}), configYaml: '', imageRef: 'x', gitUrl: 'y', allowDirty: true })).rejects.toThrow(/tasks\/new\.md is not committed at HEAD/);
    } finally {
      await rm(repo, { recursive: true, force: true });
    }
  });
});

describe('the Swarm ServiceSpec of a loop', () => {
  it('is a replicated job of one completion, never restarted, on labelled nodes, with the socket in the runner only', () => {
    const spec = runnerServiceSpec(plan) as unknown as ServiceSpec;
    expect(spec.Name).toBe(serviceName(plan));
    expect(spec.Mode).toEqual({ ReplicatedJob: { MaxConcurrent: 1, TotalCompletions: 1 } });
    expect(spec.TaskTemplate.RestartPolicy.Condition).toBe('none');
    expect(spec.TaskTemplate.Placement.Constraints).toEqual([PLACEMENT]);
    expect(spec.TaskTemplate.ContainerSpec.Mounts).toEqual([
      { Type: 'bind', Source: DOCKER_SOCKET, Target: DOCKER_SOCKET },
      { Type: 'bind', Source: plan.workDir, Target: plan.workDir },
    ]);
    expect(spec.TaskTemplate.Resources.Reservations?.GenericResources).toEqual([{ DiscreteResourceSpec: { Kind: SLOT_RESOURCE, Value: 1 } }]);
    expect(spec.Labels).toMatchObject({ 'loopbox.managed': 'true', 'loopbox.role': 'runner', 'loopbox.run-id': plan.runId, 'loopbox.task': plan.task });
    const env = new Map(spec.TaskTemplate.ContainerSpec.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    expect(Buffer.from(env.get('LOOPBOX_JOB_CONFIG') ?? '', 'base64').toString()).toBe(plan.configYaml);
    expect((runnerServiceSpec({ ...plan, slotResource: false }) as unknown as ServiceSpec).TaskTemplate.Resources).toEqual({});
  });

  it('service names stay within Swarm\'s 63 characters', () => {
    expect(serviceName({ runId: plan.runId, task: 'x'.repeat(80) }).length).toBeLessThanOrEqual(63);
  });
});

describe('cluster: in loopbox.yaml', () => {
  it('has defaults, and refuses a relative work folder and an unknown key with the key named', () => {
    expect(parseConfig({}).cluster).toMatchObject({ mode: 'local', workDir: '/var/lib/loopbox-swarm', timeout: 7_200_000 });
    expect(() => parseConfig({ cluster: { workDir: 'work' } })).toThrow(/cluster\.workDir/);
    expect(() => parseConfig({ cluster: { nodes: 3 } })).toThrow(/cluster\.nodes: unknown key/);
  });
});
