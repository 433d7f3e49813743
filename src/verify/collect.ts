// Getting the test report out of the stopped verify container, to be parsed on the host. Before
// the command starts, the report folder is created empty and the report path must not exist (a
// report planted in the worktree is refused); after it exits, exactly one regular file is read,
// bounded in size, through the Docker archive API (no bind mount, no link followed on the host).
import path from 'node:path';
import type { Readable } from 'node:stream';
import { describe } from '../common/errors.js';
import { DockerApiError, type DockerClient, isGone } from '../docker/client.js';
import type { ReportOutcome } from './accounting.js';
import { type ReportSetting, REPORT_DIR } from './presets.js';
import { MAX_REPORT_BYTES, ReportParseError, parseReport } from './report.js';

/** The report's absolute path in the verify container (relative paths are under the workdir). */
export function reportPathIn(setting: ReportSetting, workdir: string): string {
  return path.posix.resolve(workdir, setting.path);
}

/**
 * Creates the empty report folder. `planted`: the verified tree itself holds a file at the
 * report path (the caller looks in the tree: the files come from it, not from the worktree).
 */
export async function prepareReport(docker: DockerClient, id: string, setting: ReportSetting, planted: boolean, uid: number): Promise<{ planted: boolean }> {
  await docker.putArchive(id, Buffer.from(directoryTar(REPORT_DIR.slice(1), uid)), '/');
  return { planted };
}


/** `readFrom`: where the report was moved to (a report inside a tmpfs workdir is copied out). */
export async function collectReport(docker: DockerClient, id: string, setting: ReportSetting, workdir: string, planted: boolean, readFrom?: string): Promise<ReportOutcome> {
  const where = reportPathIn(setting, workdir);
  if (planted) return { kind: 'invalid', detail: `${where} existed before the verify command started (it came with the worktree); it is not trusted` };
  let stream: Readable;
  try {
    stream = await docker.getArchive(id, readFrom ?? where);
  } catch (error) {
    if (isGone(error)) return { kind: 'missing', detail: `the verify command wrote no report at ${where}` };
    // The engine's own reason, not the facade's wording around it.
    return { kind: 'missing', detail: `could not read ${where}: ${describe(error instanceof DockerApiError ? error.cause : error)}` };
  }
  let file: Buffer;
  try {
    file = singleFileFromTar(await readCapped(stream, MAX_REPORT_BYTES + 64 * 1024));
  } catch (error) {
    return { kind: 'invalid', detail: `${where}: ${(error as Error).message}` };
  }
  try {
    return { kind: 'ok', report: parseReport(setting.format, file.toString('utf8')) };
  } catch (error) {
    if (error instanceof ReportParseError) return { kind: 'invalid', detail: `${where} is not a ${setting.format} report: ${error.message}` };
    throw error;
  }
}

async function readCapped(stream: Readable, cap: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > cap) {
      stream.destroy();
      throw new Error(`report is larger than ${MAX_REPORT_BYTES} bytes`);
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

/** The content of the one regular file in a tar (PAX headers skipped); anything else is refused. */
export function singleFileFromTar(tar: Buffer): Buffer {
  let offset = 0;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const type = String.fromCharCode(header[156]!);
    const size = octal(header.subarray(124, 136));
    const dataStart = offset + 512;
    if (type === 'x' || type === 'g') {
      offset = dataStart + Math.ceil(size / 512) * 512;
      continue;
    }
    if (type !== '0' && type !== '\0') throw new Error('not a regular file (a link, folder or device is not a report)');
    if (size > MAX_REPORT_BYTES) throw new Error(`report is larger than ${MAX_REPORT_BYTES} bytes`);
    if (dataStart + size > tar.length) throw new Error('truncated archive');
    return tar.subarray(dataStart, dataStart + size);
  }
  throw new Error('empty archive');
}

function octal(field: Buffer): number {
  if (field[0]! & 0x80) throw new Error('report size field in base-256: far too large');
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  const n = text ? parseInt(text, 8) : 0;
  if (!Number.isSafeInteger(n) || n < 0) throw new Error('bad size in archive header');
  return n;
}

/** A tar holding one empty directory entry (`name/`, mode 0700, owned by uid:uid). */
export function directoryTar(name: string, uid: number): Uint8Array {
  const header = Buffer.alloc(512);
  header.write(`${name}/`, 0, 100, 'utf8');
  header.write('0000700\0', 100, 'latin1');
  header.write(`${uid.toString(8).padStart(7, '0')}\0`, 108, 'latin1');
  header.write(`${uid.toString(8).padStart(7, '0')}\0`, 116, 'latin1');
  header.write('00000000000\0', 124, 'latin1');
  header.write(`${Math.floor(Date.now() / 1000).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  header.write('        ', 148, 'latin1');
  header.write('5', 156, 'latin1');
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  let sum = 0;
  for (const b of header) sum += b;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return Buffer.concat([header, Buffer.alloc(1024)]);
}
