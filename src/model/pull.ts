// `loopbox model pull`: the one step that downloads (a GGUF, into the model directory). Nothing
// else in loopbox ever needs egress. Written to `<name>.part` and renamed when complete and
// checked, so an interrupted download never looks like a model.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ConfigError, LoopboxError, describe } from '../common/errors.js';
import { expandHome, stateDir } from '../common/paths.js';

export interface PullOptions {
  /** A URL, or `hf:<owner>/<repo>/<file.gguf>` (a Hugging Face repo's main branch). */
  source: string;
  dir?: string | undefined;
  sha256?: string | undefined;
  force?: boolean;
  onProgress?: (done: number, total: number | undefined) => void;
  signal?: AbortSignal;
}

export function modelsDir(env = process.env): string {
  return path.join(stateDir(env), 'models');
}

/** `hf:owner/repo/path/file.gguf` → the file's download URL on huggingface.co. */
export function resolvePullUrl(source: string): URL {
  const hf = /^hf:([^/\s]+)\/([^/\s]+)\/(.+\.gguf)$/i.exec(source);
  if (hf) return new URL(`https://huggingface.co/${hf[1]}/${hf[2]}/resolve/main/${hf[3]}`);
  let url: URL;
  try {
    url = new URL(source);
  } catch {
    throw new ConfigError(`${JSON.stringify(source)} is neither a URL nor hf:<owner>/<repo>/<file>.gguf.`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(`Only http(s) downloads are supported, got ${url.protocol}`);
  return url;
}

export async function pullModel(options: PullOptions): Promise<{ file: string; bytes: number; sha256: string }> {
  const url = resolvePullUrl(options.source);
  const dir = path.resolve(expandHome(options.dir ?? modelsDir()));
  const name = path.basename(decodeURIComponent(url.pathname));
  if (!/\.gguf$/i.test(name)) throw new ConfigError(`${url.href} does not name a .gguf file.`);
  const file = path.join(dir, name);
  if (!options.force && (await stat(file).catch(() => undefined))) {
    throw new ConfigError(`${file} already exists.`, [], { hint: 'Pass --force to download it again.' });
  }
  await mkdir(dir, { recursive: true });
  let response: Response;
  try {
    response = await fetch(url, { redirect: 'follow', signal: options.signal ?? null });
  } catch (error) {
    throw new LoopboxError(`Downloading ${url.href} failed: ${describe(error)}`, { hint: 'Check the URL and that this machine reaches it.' });
  }
  if (!response.ok || !response.body) throw new LoopboxError(`Downloading ${url.href} failed: HTTP ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get('content-length')) || undefined;
  const part = `${file}.part`;
  const hash = createHash('sha256');
  let done = 0;
  const body = Readable.fromWeb(response.body as import('node:stream/web').ReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    done += chunk.length;
    options.onProgress?.(done, total);
  });
  try {
    await pipeline(body, createWriteStream(part));
    if (total !== undefined && done !== total) throw new LoopboxError(`Download ended after ${done} of ${total} bytes.`);
    const magic = Buffer.alloc(4);
    const fh = await open(part, 'r');
    await fh.read(magic, 0, 4, 0).finally(() => fh.close());
    if (magic.toString('latin1') !== 'GGUF') throw new LoopboxError(`${url.href} is not a GGUF file (it does not start with "GGUF").`);
    const digest = hash.digest('hex');
    if (options.sha256 && options.sha256.toLowerCase() !== digest) throw new LoopboxError(`SHA-256 mismatch: expected ${options.sha256}, got ${digest}.`);
    await rename(part, file);
    return { file, bytes: done, sha256: digest };
  } catch (error) {
    await rm(part, { force: true });
    throw error;
  }
}
