// Images: list, find, remove, pull, import a root file system, build.
import type { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { RecentLines, describe } from '../common/errors.js';
import { isGone, wrapApiError } from './errors.js';
import type { Labels } from './labels.js';
import { followProgress } from './streams.js';
import type { BuildOptions, ImageSummary } from './types.js';

export async function listImages(api: Docker, labelFilter: string[]): Promise<ImageSummary[]> {
  const images = await api.listImages({ filters: JSON.stringify({ label: labelFilter }) });
  return images.map((i) => ({
    id: i.Id,
    tags: i.RepoTags ?? [],
    labels: i.Labels ?? {},
    created: i.Created,
    size: i.Size,
  }));
}

/** Labels and id of an image, or undefined when it does not exist locally. */
export async function findImage(api: Docker, ref: string): Promise<{ id: string; labels: Labels; entrypoint: string[] } | undefined> {
  try {
    const info = await api.getImage(ref).inspect();
    const entrypoint = info.Config?.Entrypoint as unknown;
    return { id: info.Id, labels: info.Config?.Labels ?? {}, entrypoint: Array.isArray(entrypoint) ? (entrypoint as string[]) : typeof entrypoint === 'string' ? [entrypoint] : [] };
  } catch (error) {
    if (isGone(error)) return undefined;
    throw wrapApiError(error, `inspecting image ${ref}`, { image: ref });
  }
}

export async function removeImage(api: Docker, ref: string): Promise<void> {
  try {
    await api.getImage(ref).remove({ force: true });
  } catch (error) {
    if (!isGone(error)) throw wrapApiError(error, `removing image ${ref}`, { image: ref });
  }
}

/** Tries a registry pull; resolves false (not throws) when no registry answers. */
export async function tryPull(api: Docker, ref: string, onLine?: (line: string) => void): Promise<boolean> {
  try {
    const stream = await api.pull(ref);
    await followProgress(api, stream, onLine);
    return true;
  } catch (error) {
    onLine?.(`pull ${ref} failed: ${describe(error)}`);
    return false;
  }
}

/** Imports a root filesystem tar stream as an image (for bases made with debootstrap). */
export async function importRootfs(api: Docker, tar: Readable, repo: string, tag: string, changes: string[]): Promise<void> {
  try {
    const stream = await api.importImage(tar, { repo, tag, changes } as unknown as object);
    await followProgress(api, stream);
  } catch (error) {
    throw wrapApiError(error, `importing a root file system as ${repo}:${tag}`, { image: `${repo}:${tag}` });
  }
}

/** Builds from a context tar; streams progress lines; errors carry the last lines. */
export async function buildImage(api: Docker, context: Readable, options: BuildOptions): Promise<void> {
  const recent = new RecentLines(30);
  const onLine = (line: string): void => {
    recent.push(`${line}\n`);
    options.onLine?.(line);
  };
  let stream: NodeJS.ReadableStream;
  try {
    stream = await api.buildImage(context, {
      t: options.tag,
      labels: options.labels,
      buildargs: options.buildArgs,
      rm: true,
      forcerm: true,
      pull: false,
    } as Docker.ImageBuildOptions);
  } catch (error) {
    throw new BuildFailure(describe(error), recent.toString());
  }
  try {
    await followProgress(api, stream, onLine);
  } catch (error) {
    throw new BuildFailure(describe(error), recent.toString());
  }
}

/** The commands that made each layer of an image, newest first (`docker history`). */
export async function imageHistory(api: Docker, ref: string): Promise<string[]> {
  try {
    const history = (await api.getImage(ref).history()) as Array<{ CreatedBy: string }>;
    return history.map((h) => h.CreatedBy);
  } catch (error) {
    throw wrapApiError(error, `reading the history of image ${ref}`, { image: ref });
  }
}

export class BuildFailure extends Error {
  constructor(
    message: string,
    readonly logTail: string,
  ) {
    super(message);
    this.name = 'BuildFailure';
  }
}
