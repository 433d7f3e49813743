// `loopbox images build`: builds every project image, tagged with the package version, and
// skips one whose inputs (Dockerfile dir, base image id, build args, extra CA) are unchanged.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import tar from 'tar-fs';
import { ConfigError, ImageBuildError, describe } from '../common/errors.js';
import { expandHome, packageRoot } from '../common/paths.js';
import { BuildFailure, type DockerClient } from '../docker/client.js';
import { LABELS } from '../docker/labels.js';
import { ensureBaseImage } from './base.js';
import { IMAGE_BASES, IMAGE_NAMES, type ImageName, imageRef } from './catalog.js';

export interface BuildImagesOptions {
  only?: ImageName[];
  caCerts?: string[];
  offline?: boolean;
  mirror?: string | undefined;
  /** Rebuild even when the inputs hash matches. */
  force?: boolean;
  onLine?: (line: string) => void;
}

export interface BuiltImage {
  name: ImageName;
  ref: string;
  status: 'built' | 'unchanged';
  seconds: number;
}

/** The file inside every build context that holds extra CA certificates (possibly empty). */
export const EXTRA_CA_FILE = 'loopbox-extra-ca.pem';

export async function buildImages(docker: DockerClient, options: BuildImagesOptions = {}): Promise<BuiltImage[]> {
  const names = options.only?.length ? options.only : [...IMAGE_NAMES];
  const ca = await readCaCerts(options.caCerts ?? []);
  const results: BuiltImage[] = [];
  for (const name of names) results.push(await buildOne(docker, name, ca, options));
  return results;
}

async function buildOne(docker: DockerClient, name: ImageName, ca: string, options: BuildImagesOptions): Promise<BuiltImage> {
  const started = Date.now();
  const ref = imageRef(name);
  const { base, suite } = IMAGE_BASES[name];
  const say = (line: string): void => options.onLine?.(`[${name}] ${line}`);
  await ensureBaseImage(docker, base, suite, { offline: options.offline ?? false, mirror: options.mirror, onLine: say });
  const baseId = (await docker.findImage(base))?.id ?? 'unknown';
  const dir = path.join(packageRoot(), 'images', name);
  const buildArgs = { BASE_IMAGE: base };
  // Images are marked by `loopbox.image`, never `loopbox.managed`: containers inherit their
  // image's labels, and `managed` + a run id is what makes a container gc's to remove.
  const imageLabels = { [LABELS.image]: name };
  const hash = await inputsHash(dir, { baseId, buildArgs, ca, imageLabels });
  const existing = await docker.findImage(ref);
  if (!options.force && existing?.labels[LABELS.inputsHash] === hash) {
    say(`unchanged (${hash.slice(0, 12)})`);
    return { name, ref, status: 'unchanged', seconds: (Date.now() - started) / 1000 };
  }
  say(`building ${ref}`);
  const context = await mkdtemp(path.join(tmpdir(), `loopbox-build-${name}-`));
  try {
    await cp(dir, context, { recursive: true });
    // The CA goes only into the build context; the Dockerfiles use it in a fetch stage and
    // leave it out of the final image.
    await writeFile(path.join(context, EXTRA_CA_FILE), ca);
    await docker.build(tar.pack(context) as unknown as Readable, {
      tag: ref,
      labels: { ...imageLabels, [LABELS.inputsHash]: hash },
      buildArgs,
      onLine: (line) => {
        if (/^Step \d+\/\d+/.test(line) || /^Successfully/.test(line)) say(line);
      },
    });
  } catch (error) {
    const tail = error instanceof BuildFailure ? error.logTail : '';
    throw new ImageBuildError(ref, describe(error), tail, { cause: error, hint: hintFor(describe(error) + tail) });
  } finally {
    await rm(context, { recursive: true, force: true });
  }
  const seconds = (Date.now() - started) / 1000;
  say(`built in ${seconds.toFixed(1)} s`);
  return { name, ref, status: 'built', seconds };
}

function hintFor(text: string): string | undefined {
  if (/SELF_SIGNED_CERT|UNABLE_TO_GET_ISSUER|certificate/i.test(text)) {
    return 'A TLS-intercepting proxy is in the way: pass its CA with --ca-cert FILE (e.g. the file $NODE_EXTRA_CA_CERTS names).';
  }
  if (/Temporary failure resolving|Could not resolve|ENOTFOUND/i.test(text)) {
    return 'The build could not reach a package mirror; check the network or use a site mirror.';
  }
  return undefined;
}

async function readCaCerts(files: string[]): Promise<string> {
  const parts: string[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(expandHome(file), 'utf8');
    } catch (error) {
      throw new ConfigError(`Cannot read CA certificate file ${file}: ${describe(error)}`);
    }
    if (!text.includes('-----BEGIN CERTIFICATE-----')) {
      throw new ConfigError(`CA certificate file ${file} holds no PEM certificate (expected "-----BEGIN CERTIFICATE-----").`);
    }
    parts.push(text.trim());
  }
  return parts.length ? `${parts.join('\n')}\n` : '';
}

/**
 * The CA bundle this host's own tools trust (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, or Debian's
 * bundle): behind a TLS-intercepting proxy, that is what npm inside a build needs too.
 */
export function hostCaBundle(env: NodeJS.ProcessEnv = process.env): string[] {
  for (const file of [env.NODE_EXTRA_CA_CERTS, env.SSL_CERT_FILE, '/etc/ssl/certs/ca-certificates.crt']) {
    if (file && existsSync(file)) return [file];
  }
  return [];
}

/** Hash of everything that decides an image's content. */
export async function inputsHash(dir: string, extra: Record<string, unknown>): Promise<string> {
  const hash = createHash('sha256');
  for (const file of await listFiles(dir)) {
    hash.update(`file:${path.relative(dir, file)}\0`);
    hash.update(await readFile(file));
    hash.update('\0');
  }
  hash.update(JSON.stringify(extra));
  return hash.digest('hex');
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true });
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(full)));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** Which project images exist locally, and whether they are current. */
export async function imageStatus(docker: DockerClient): Promise<Array<{ name: ImageName; ref: string; present: boolean }>> {
  const out = [];
  for (const name of IMAGE_NAMES) {
    const ref = imageRef(name);
    out.push({ name, ref, present: Boolean(await docker.findImage(ref)) });
  }
  return out;
}
