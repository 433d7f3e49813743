// Networks (and volumes): create, find, connect, remove.
import type Docker from 'dockerode';
import { isGone, wrapApiError } from './errors.js';
import type { NetworkSpec } from './types.js';

export async function createNetwork(api: Docker, spec: NetworkSpec): Promise<string> {
  const ipam: Docker.IPAM = { Driver: 'default', Config: [] };
  if (spec.subnet) ipam.Config!.push({ Subnet: spec.subnet });
  if (spec.ipv6Subnet) ipam.Config!.push({ Subnet: spec.ipv6Subnet });
  try {
    const network = await api.createNetwork({
      Name: spec.name,
      Driver: 'bridge',
      Internal: spec.internal,
      Labels: spec.labels,
      CheckDuplicate: true,
      EnableIPv6: Boolean(spec.ipv6Subnet),
      IPAM: ipam.Config!.length ? ipam : undefined,
    });
    return network.id;
  } catch (error) {
    throw wrapApiError(error, `creating network ${spec.name}`, { network: spec.name });
  }
}

export async function findNetwork(api: Docker, name: string): Promise<Docker.NetworkInspectInfo | undefined> {
  try {
    return (await api.getNetwork(name).inspect());
  } catch (error) {
    if (isGone(error)) return undefined;
    throw wrapApiError(error, `inspecting network ${name}`, { network: name });
  }
}

export async function connectNetwork(api: Docker, network: string, containerId: string, aliases?: string[]): Promise<void> {
  try {
    await api.getNetwork(network).connect({ Container: containerId, EndpointConfig: aliases ? { Aliases: aliases } : {} });
  } catch (error) {
    throw wrapApiError(error, `connecting ${containerId.slice(0, 12)} to network ${network}`, { network, containerId });
  }
}

export async function removeNetwork(api: Docker, idOrName: string): Promise<void> {
  try {
    await api.getNetwork(idOrName).remove();
  } catch (error) {
    if (!isGone(error)) throw wrapApiError(error, `removing network ${idOrName}`, { network: idOrName });
  }
}

export async function removeVolume(api: Docker, name: string): Promise<void> {
  try {
    await api.getVolume(name).remove({ force: true });
  } catch (error) {
    if (!isGone(error)) throw wrapApiError(error, `removing volume ${name}`);
  }
}

