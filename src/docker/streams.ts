// Streams: a container's output (attach before start, logs, waiting for a ready line), exec,
// Docker's multiplexed stream format, and the progress stream of pulls and builds.
import { PassThrough, type Readable } from 'node:stream';
import type Docker from 'dockerode';
import { ContainerError } from '../common/errors.js';
import { inspectContainer } from './containers.js';
import { wrapApiError } from './errors.js';
import type { ExecResult } from './types.js';

/**
 * Attach to stdout/stderr before start. `drained(ms)` resolves once the output has ended
 * (or after `ms`, for a stream that never ends); it is set up now, so a container that is
 * already gone when the caller asks does not cost the full wait.
 */
export async function attachContainer(api: Docker, id: string): Promise<{ stdout: Readable; stderr: Readable; drained: (ms: number) => Promise<void> }> {
  const stream = (await api
    .getContainer(id)
    .attach({ stream: true, stdout: true, stderr: true })
    .catch((error: unknown) => {
      throw wrapApiError(error, `attaching to container ${id.slice(0, 12)}`, { containerId: id });
    })) as NodeJS.ReadableStream;
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  api.modem.demuxStream(stream, stdout, stderr);
  const ended = new Promise<void>((resolve) => {
    stream.on('end', () => {
      stdout.end();
      stderr.end();
      resolve();
    });
    stream.on('close', () => resolve());
  });
  const drained = (ms: number): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([ended, new Promise<void>((r) => (timer = setTimeout(r, ms)))]).finally(() => clearTimeout(timer));
  };
  return { stdout, stderr, drained };
}

export async function containerLogs(api: Docker, id: string, tail = 30): Promise<string> {
  try {
    const buffer = await api.getContainer(id).logs({ stdout: true, stderr: true, tail, follow: false });
    return demuxBuffer(buffer);
  } catch {
    return '';
  }
}

export async function execInContainer(api: Docker, id: string, cmd: string[], user?: string): Promise<ExecResult> {
  const container = api.getContainer(id);
  let exec: Docker.Exec;
  let stream: NodeJS.ReadWriteStream;
  try {
    exec = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, User: user });
    stream = await exec.start({ hijack: true, stdin: false });
  } catch (error) {
    throw wrapApiError(error, `running ${cmd[0] ?? 'a command'} in container ${id.slice(0, 12)}`, { containerId: id });
  }
  const stdout = new RecentText();
  const stderr = new RecentText();
  const out = new PassThrough();
  const err = new PassThrough();
  out.on('data', (c: Buffer) => stdout.push(c));
  err.on('data', (c: Buffer) => stderr.push(c));
  api.modem.demuxStream(stream, out, err);
  await new Promise<void>((resolve, reject) => {
    stream.on('end', () => resolve());
    stream.on('error', reject);
  });
  const info = await exec.inspect();
  return { exitCode: info.ExitCode ?? -1, stdout: stdout.text(), stderr: stderr.text() };
}

/**
 * Waits until a line matching `pattern` appears in the container's output, following the log
 * stream (no polling: several loops starting at once would keep the daemon busy).
 */
export async function waitForLog(api: Docker, id: string, pattern: RegExp, timeoutMs: number, image: string, role?: string): Promise<void> {
  const stream = (await api
    .getContainer(id)
    .logs({ follow: true, stdout: true, stderr: true })
    .catch((error: unknown) => {
      throw wrapApiError(error, `following the log of container ${id.slice(0, 12)}`, { containerId: id, image });
    })) as NodeJS.ReadableStream & { destroy?: () => void };
  const out = new PassThrough();
  api.modem.demuxStream(stream, out, out);
  let text = '';
  const tail = (): string => text.split('\n').slice(-20).join('\n');
  const what = role ?? 'container';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ContainerError(`The ${what} was not ready within ${Math.round(timeoutMs / 1000)} s`, { image, containerId: id, role, timedOut: true, logTail: tail() }));
      }, timeoutMs);
      const settle = (fn: () => void): void => {
        clearTimeout(timer);
        fn();
      };
      out.on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8');
        if (pattern.test(text)) settle(resolve);
      });
      // The follow stream ends when the container stops.
      stream.on('end', () => {
        if (pattern.test(text)) return settle(resolve);
        void inspectContainer(api, id)
          .then((info) => info.State.ExitCode)
          .catch(() => undefined)
          .then((exitCode) => settle(() => reject(new ContainerError(`The ${what} exited before it was ready`, { image, containerId: id, role, exitCode, logTail: tail() }))));
      });
      stream.on('error', (error: Error) => settle(() => reject(error)));
    });
  } finally {
    stream.destroy?.();
  }
}

interface ProgressEvent {
  stream?: string;
  status?: string;
  progress?: string;
  error?: string;
  errorDetail?: { message?: string };
}

export function followProgress(api: Docker, stream: NodeJS.ReadableStream, onLine?: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let failure: string | undefined;
    api.modem.followProgress(
      stream,
      (error: Error | null) => {
        if (error) reject(error);
        else if (failure) reject(new Error(failure));
        else resolve();
      },
      (event: ProgressEvent) => {
        if (event.error) failure = event.errorDetail?.message ?? event.error;
        const text = event.stream ?? event.status ?? event.error;
        if (text && onLine) {
          for (const line of text.split('\n')) if (line.trim()) onLine(line.trimEnd());
        }
      },
    );
  });
}

/** Docker's multiplexed log format: 8-byte headers per frame (stream, size). */
export function demuxBuffer(buffer: Buffer): string {
  if (!Buffer.isBuffer(buffer)) return String(buffer);
  const chunks: Buffer[] = [];
  let offset = 0;
  while (offset + 8 <= buffer.length) {
    const type = buffer[offset];
    const size = buffer.readUInt32BE(offset + 4);
    if (type === undefined || type > 2) return buffer.toString('utf8');
    chunks.push(buffer.subarray(offset + 8, offset + 8 + size));
    offset += 8 + size;
  }
  return Buffer.concat(chunks).toString('utf8');
}

class RecentText {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max = 1 << 20) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.chunks.length > 1) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}
