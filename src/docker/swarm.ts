// Swarm mode: the engine's own scheduler for loops spread over several machines. Only what
// loopbox needs: the swarm's state, labelled nodes, job services and their tasks.
import type Docker from 'dockerode';
import { isGone, wrapApiError } from './errors.js';

export interface SwarmState {
  /** `inactive`, `pending`, `active`, `error`, `locked`. */
  state: string;
  nodeId: string;
  isManager: boolean;
  /** The address other nodes reach this one at (advertise address). */
  nodeAddr: string;
}

export interface SwarmNode {
  id: string;
  hostname: string;
  labels: Record<string, string>;
  /** `ready`, `down`, `unknown`, `disconnected`. */
  state: string;
  availability: string;
  addr: string;
  /** Generic resources the node advertises (`node-generic-resources` in daemon.json). */
  genericResources: Record<string, number>;
}

export interface SwarmTask {
  id: string;
  serviceId: string;
  nodeId: string;
  /** `new` … `running`, `complete`, `failed`, `rejected`, `orphaned`, `shutdown`. */
  state: string;
  desiredState: string;
  message: string;
  error: string;
  containerId: string | undefined;
  exitCode: number | undefined;
  updatedAt: string;
}

export interface ServiceSummary {
  id: string;
  name: string;
  labels: Record<string, string>;
  mode: 'replicated-job' | 'global-job' | 'replicated' | 'global';
  createdAt: string;
}

interface RawNode {
  ID: string;
  Description?: { Hostname?: string; Resources?: { GenericResources?: Array<{ DiscreteResourceSpec?: { Kind: string; Value: number } }> } };
  Spec?: { Labels?: Record<string, string>; Availability?: string };
  Status?: { State?: string; Addr?: string };
}

interface RawService {
  ID: string;
  CreatedAt?: string;
  Spec?: { Name?: string; Labels?: Record<string, string>; Mode?: { ReplicatedJob?: unknown; GlobalJob?: unknown; Global?: unknown } };
}

interface RawTask {
  ID: string;
  ServiceID: string;
  NodeID?: string;
  DesiredState?: string;
  UpdatedAt?: string;
  Status?: { State?: string; Message?: string; Err?: string; ContainerStatus?: { ContainerID?: string; ExitCode?: number } };
}

export async function swarmState(api: Docker): Promise<SwarmState> {
  const info = (await api.info()) as { Swarm?: { LocalNodeState?: string; NodeID?: string; ControlAvailable?: boolean; NodeAddr?: string } };
  const s = info.Swarm ?? {};
  return { state: s.LocalNodeState ?? 'inactive', nodeId: s.NodeID ?? '', isManager: Boolean(s.ControlAvailable), nodeAddr: s.NodeAddr ?? '' };
}

export async function listNodes(api: Docker): Promise<SwarmNode[]> {
  try {
    const nodes = (await api.listNodes()) as RawNode[];
    return nodes.map((n) => ({
      id: String(n.ID),
      hostname: String(n.Description?.Hostname ?? ''),
      labels: n.Spec?.Labels ?? {},
      state: String(n.Status?.State ?? 'unknown'),
      availability: String(n.Spec?.Availability ?? 'unknown'),
      addr: String(n.Status?.Addr ?? ''),
      genericResources: Object.fromEntries(
        (n.Description?.Resources?.GenericResources ?? []).flatMap((r) => (r.DiscreteResourceSpec ? [[r.DiscreteResourceSpec.Kind, r.DiscreteResourceSpec.Value]] : [])),
      ),
    }));
  } catch (error) {
    throw wrapApiError(error, 'listing swarm nodes');
  }
}

export async function updateNodeLabels(api: Docker, nodeId: string, change: (labels: Record<string, string>) => Record<string, string>): Promise<void> {
  try {
    const node = api.getNode(nodeId);
    const info = (await node.inspect()) as { Version: { Index: number }; Spec: { Labels?: Record<string, string> } & Record<string, unknown> };
    await node.update({ version: info.Version.Index, ...info.Spec, Labels: change({ ...(info.Spec.Labels ?? {}) }) });
  } catch (error) {
    throw wrapApiError(error, `updating the labels of swarm node ${nodeId}`);
  }
}

/** Creates a service from a full Swarm ServiceSpec; returns its id. */
export async function createService(api: Docker, spec: Record<string, unknown>): Promise<string> {
  try {
    const res = (await api.createService(spec as unknown as Docker.CreateServiceOptions)) as { id?: string; ID?: string };
    return String(res.id ?? res.ID);
  } catch (error) {
    throw wrapApiError(error, `creating swarm service ${String(spec.Name)}`);
  }
}

export async function listServices(api: Docker, labels: string[]): Promise<ServiceSummary[]> {
  try {
    const services = (await api.listServices({ filters: JSON.stringify({ label: labels }) })) as RawService[];
    return services.map((s) => ({
      id: String(s.ID),
      name: String(s.Spec?.Name ?? ''),
      labels: s.Spec?.Labels ?? {},
      mode: s.Spec?.Mode?.ReplicatedJob ? 'replicated-job' : s.Spec?.Mode?.GlobalJob ? 'global-job' : s.Spec?.Mode?.Global ? 'global' : 'replicated',
      createdAt: String(s.CreatedAt ?? ''),
    }));
  } catch (error) {
    throw wrapApiError(error, 'listing swarm services');
  }
}

export async function removeService(api: Docker, idOrName: string): Promise<void> {
  try {
    await api.getService(idOrName).remove();
  } catch (error) {
    if (isGone(error)) return;
    throw wrapApiError(error, `removing swarm service ${idOrName}`);
  }
}

export async function listTasks(api: Docker, serviceId: string): Promise<SwarmTask[]> {
  try {
    const tasks = (await api.listTasks({ filters: JSON.stringify({ service: [serviceId] }) })) as RawTask[];
    return tasks.map((t) => ({
      id: String(t.ID),
      serviceId: String(t.ServiceID),
      nodeId: String(t.NodeID ?? ''),
      state: String(t.Status?.State ?? 'unknown'),
      desiredState: String(t.DesiredState ?? ''),
      message: String(t.Status?.Message ?? ''),
      error: String(t.Status?.Err ?? ''),
      containerId: t.Status?.ContainerStatus?.ContainerID,
      exitCode: t.Status?.ContainerStatus?.ExitCode,
      updatedAt: String(t.UpdatedAt ?? ''),
    }));
  } catch (error) {
    throw wrapApiError(error, `listing the tasks of swarm service ${serviceId}`);
  }
}

/** The last lines a service's tasks wrote (stdout and stderr together). */
export async function serviceLogs(api: Docker, serviceId: string, tail = 40): Promise<string> {
  try {
    // dockerode types a service's logs as a stream; with follow: false the engine sends a buffer.
    const service = api.getService(serviceId) as unknown as { logs: (opts: Record<string, unknown>) => Promise<Buffer | string> };
    const raw = await service.logs({ stdout: true, stderr: true, tail, follow: false });
    return demux(Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw)));
  } catch {
    return '';
  }
}

function demux(buf: Buffer): string {
  const parts: string[] = [];
  let i = 0;
  while (i + 8 <= buf.length && (buf[i] === 1 || buf[i] === 2) && buf[i + 1] === 0) {
    const len = buf.readUInt32BE(i + 4);
    parts.push(buf.subarray(i + 8, i + 8 + len).toString('utf8'));
    i += 8 + len;
  }
  return i === 0 ? buf.toString('utf8') : parts.join('');
}

/** A Swarm secret (kept encrypted in the managers' log, mounted only into the services named). */
export async function createSecret(api: Docker, name: string, data: string, labels: Record<string, string>): Promise<string> {
  try {
    const res = (await api.createSecret({ Name: name, Labels: labels, Data: Buffer.from(data).toString('base64') })) as { id?: string; ID?: string };
    return String(res.id ?? res.ID);
  } catch (error) {
    throw wrapApiError(error, `creating swarm secret ${name}`);
  }
}

export async function removeSecret(api: Docker, idOrName: string): Promise<void> {
  try {
    await api.getSecret(idOrName).remove();
  } catch (error) {
    if (isGone(error)) return;
    throw wrapApiError(error, `removing swarm secret ${idOrName}`);
  }
}
