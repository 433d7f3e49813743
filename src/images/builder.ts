// `loopbox images build`: builds every project image, tagged with the package version, and
// skips one whose inputs (Dockerfile dir, base image id, build args) are unchanged. The extra CA
// is not an input: it is used only while fetching and never reaches a final image.
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
import { addRunnerContext } from './runner-context.js';
import { type BuildableImage, IMAGE_BASES, IMAGE_NAMES, type ImageName, type Toolchain, imageRef, toolchainImage } from './catalog.js';

export interface BuildImagesOptions {
  only?: readonly ImageName[];
  /** Also build `loopbox/verify-<toolchain>` for each (on top of the agent image, built first). */
  toolchains?: Toolchain[];
  /** `images.caCerts` and `--ca-cert` files; NODE_EXTRA_CA_CERTS from `env` is added (see caCertFiles). */
  caCerts?: string[];
  /** Where NODE_EXTRA_CA_CERTS is read from (default: process.env). */
  env?: NodeJS.ProcessEnv;
  offline?: boolean;
  mirror?: string | undefined;
  /** Rebuild even when the inputs hash matches. */
  force?: boolean;
  onLine?: (line: string) => void;
}

export interface BuiltImage {
  name: BuildableImage;
  ref: string;
  status: 'built' | 'unchanged';
  seconds: number;
}

/** The file inside every build context that holds extra CA certificates (possibly empty). */
export const EXTRA_CA_FILE = 'loopbox-extra-ca.pem';

export async function buildImages(docker: DockerClient, options: BuildImagesOptions = {}): Promise<BuiltImage[]> {
  const names: BuildableImage[] = options.only?.length ? [...options.only] : [...IMAGE_NAMES];
  const toolchains = [...new Set(options.toolchains ?? [])];
  // A toolchain image is the agent image plus packages: the agent image comes first.
  if (toolchains.length && !names.includes('agent')) names.unshift('agent');
  names.push(...toolchains.map(toolchainImage));
  const ca = await readCaCerts(caCertFiles(options.caCerts ?? [], options.env ?? process.env, (line) => options.onLine?.(line)));
  const results: BuiltImage[] = [];
  for (const name of names) results.push(await buildOne(docker, name, ca, options));
  return results;
}

async function buildOne(docker: DockerClient, name: BuildableImage, ca: string, options: BuildImagesOptions): Promise<BuiltImage> {
  const started = Date.now();
  const ref = imageRef(name);
  const say = (line: string): void => options.onLine?.(`[${name}] ${line}`);
  let base: string;
  if (isCoreImage(name)) {
    const { base: debian, suite } = IMAGE_BASES[name];
    base = debian;
    await ensureBaseImage(docker, base, suite, { offline: options.offline ?? false, mirror: options.mirror, onLine: say });
  } else {
    // Toolchain images build on the agent image of the same tag, built just before.
    base = imageRef('agent');
    if (!(await docker.findImage(base))) throw new ImageBuildError(ref, `its base ${base} is missing`, '', { hint: 'Build it first: loopbox images build --only agent' });
  }
  // The base's id is an input: a rebuilt agent image rebuilds the toolchain images on it.
  const baseId = (await docker.findImage(base))?.id ?? 'unknown';
  const dir = path.join(packageRoot(), 'images', name);
  const buildArgs = { BASE_IMAGE: base };
  // Images are marked by `loopbox.image`, never `loopbox.managed`: containers inherit their
  // image's labels, and `managed` + a run id is what makes a container gc's to remove.
  const imageLabels = { [LABELS.image]: name };
  // The CA is left out on purpose (issue 12): it only lets the fetch stage through a proxy, so a
  // build with another CA, or none, makes the same final image and must not force a rebuild.
  const context = await mkdtemp(path.join(tmpdir(), `loopbox-build-${name}-`));
  try {
    await cp(dir, context, { recursive: true, filter: (src) => !isBuildCache(src) });
    // The runner carries loopbox itself (dist, production node_modules, this Node): its inputs
    // are the assembled context, so a rebuilt dist rebuilds it.
    if (name === 'runner') await addRunnerContext(context);
    const hash = await inputsHash(name === 'runner' ? context : dir, { baseId, buildArgs, imageLabels });
    const existing = await docker.findImage(ref);
    if (!options.force && existing?.labels[LABELS.inputsHash] === hash) {
      say(`unchanged (${hash.slice(0, 12)})`);
      return { name, ref, status: 'unchanged', seconds: (Date.now() - started) / 1000 };
    }
    say(`building ${ref}`);
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
    const seconds = (Date.now() - started) / 1000;
    say(`built in ${seconds.toFixed(1)} s`);
    return { name, ref, status: 'built', seconds };
  } catch (error) {
    if (error instanceof ImageBuildError) throw error;
    const tail = error instanceof BuildFailure ? error.logTail : '';
    throw new ImageBuildError(ref, describe(error), tail, { cause: error, hint: hintFor(describe(error) + tail) });
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

function isCoreImage(name: BuildableImage): name is ImageName {
  return (IMAGE_NAMES as readonly string[]).includes(name);
}

function hintFor(text: string): string | undefined {
  if (/SELF_SIGNED_CERT|UNABLE_TO_GET_ISSUER|certificate/i.test(text)) {
    return 'A TLS-intercepting proxy is in the way: give its CA with --ca-cert FILE, images.caCerts in loopbox.yaml, or NODE_EXTRA_CA_CERTS (as for npm).';
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
 * The one CA policy of every command that builds images (`images build`, `demo`, the tests'
 * set-up, the bench): the configured and given files, plus the file NODE_EXTRA_CA_CERTS names,
 * the way Node and npm add it to their trusted roots. As in Node, a NODE_EXTRA_CA_CERTS file
 * that cannot be read is ignored with a warning; a file given explicitly must be readable.
 */
export function caCertFiles(explicit: string[], env: NodeJS.ProcessEnv = process.env, warn: (line: string) => void = () => undefined): string[] {
  const files = [...explicit];
  const fromEnv = env.NODE_EXTRA_CA_CERTS;
  if (fromEnv) {
    if (existsSync(fromEnv)) files.push(fromEnv);
    else warn(`warning: ignoring NODE_EXTRA_CA_CERTS=${fromEnv}: no such file`);
  }
  const seen = new Set<string>();
  return files.filter((f) => {
    const key = path.resolve(expandHome(f));
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
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

/** Python's bytecode caches: made by whoever ran the sentry's modules, never an image input. */
function isBuildCache(file: string): boolean {
  return path.basename(file) === '__pycache__';
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true });
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, entry.name);
    if (isBuildCache(full)) continue;
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
