// Base images without a registry: when `debian:<suite>-slim` is neither local nor pullable
// (air-gapped sites, this project's CI), make it with debootstrap from a Debian mirror and
// import it under the same name, so every Dockerfile's default `BASE_IMAGE` just works.
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { LoopboxError, describe } from '../common/errors.js';
import type { DockerClient } from '../docker/client.js';
import { LABELS } from '../docker/labels.js';

export interface BaseOptions {
  offline: boolean;
  mirror?: string | undefined;
  onLine?: (line: string) => void;
}

/** Ensures `ref` exists locally: already there, pulled, or debootstrapped. Returns how. */
export async function ensureBaseImage(
  docker: DockerClient,
  ref: string,
  suite: string,
  options: BaseOptions,
): Promise<'present' | 'pulled' | 'debootstrapped'> {
  if (await docker.findImage(ref)) return 'present';
  if (!options.offline) {
    options.onLine?.(`base ${ref}: not local, trying the registry`);
    if (await docker.tryPull(ref)) return 'pulled';
  }
  const mirror = options.mirror ?? (await debianMirrorFromApt());
  if (!mirror) {
    throw new LoopboxError(`Base image ${ref} is not local, cannot be pulled, and no Debian mirror is known to make it.`, {
      hint: 'Pass --mirror http://deb.debian.org/debian (or your site mirror), or load the image with `docker load`.',
    });
  }
  options.onLine?.(`base ${ref}: making it with debootstrap ${suite} from ${mirror}`);
  await debootstrapImport(docker, ref, suite, mirror, options.onLine);
  return 'debootstrapped';
}

async function debootstrapImport(
  docker: DockerClient,
  ref: string,
  suite: string,
  mirror: string,
  onLine?: (line: string) => void,
): Promise<void> {
  const which = await execa('sh', ['-c', 'command -v debootstrap'], { reject: false });
  if (which.exitCode !== 0) {
    throw new LoopboxError(`debootstrap is needed to make base image ${ref} offline, and it is not installed.`, {
      hint: 'apt-get install debootstrap (scripts/ensure-docker.sh does this on Debian), or load the base image with `docker load`.',
    });
  }
  const dir = await mkdtemp(path.join(tmpdir(), `loopbox-rootfs-${suite}-`));
  try {
    const started = Date.now();
    const run = await execa('debootstrap', ['--variant=minbase', suite, dir, mirror], { reject: false, all: true });
    if (run.exitCode !== 0) {
      const tail = (run.all ?? '').split('\n').slice(-15).join('\n');
      throw new LoopboxError(`debootstrap ${suite} from ${mirror} failed (exit ${run.exitCode}):\n${tail}`, {
        hint: 'Check the mirror URL and that this machine reaches it (it must serve the suite).',
      });
    }
    onLine?.(`base ${ref}: debootstrap took ${Math.round((Date.now() - started) / 1000)} s, importing`);
    const [repo, tag = 'latest'] = ref.split(':') as [string, string?];
    const tar = execa('tar', ['-C', dir, '-c', '.'], { buffer: false, stdout: 'pipe' });
    await Promise.all([
      docker.importRootfs(tar.stdout, repo, tag, [`LABEL ${LABELS.image}=base-${suite}`, 'CMD ["bash"]']),
      tar,
    ]);
  } catch (error) {
    if (error instanceof LoopboxError) throw error;
    throw new LoopboxError(`Making base image ${ref} failed: ${describe(error)}`, { cause: error });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The Debian mirror this machine's own apt uses (first non-security `debian` URI). */
export async function debianMirrorFromApt(root = '/etc/apt'): Promise<string | undefined> {
  const files: string[] = [];
  try {
    files.push(path.join(root, 'sources.list'));
    for (const f of await readdir(path.join(root, 'sources.list.d'))) files.push(path.join(root, 'sources.list.d', f));
  } catch {
    // no sources.list.d
  }
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    const uri = parseDebianMirror(text);
    if (uri) return uri;
  }
  return undefined;
}

/** Finds a Debian archive URI in one-line (`deb URI suite`) or deb822 (`URIs: URI`) sources. */
export function parseDebianMirror(text: string): string | undefined {
  const candidates: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#')) continue;
    const oneLine = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)/.exec(line);
    if (oneLine?.[1]) candidates.push(oneLine[1]);
    const deb822 = /^URIs:\s*(.+)$/i.exec(line);
    if (deb822?.[1]) candidates.push(...deb822[1].split(/\s+/));
  }
  return candidates.find((u) => /^https?:\/\//.test(u) && /\/debian\/?$/.test(u));
}
