// File access inside the agent-written worktree that never follows a symlink the agent made.
//
// Every directory is opened with O_DIRECTORY|O_NOFOLLOW and its children are reached through
// `/proc/self/fd/<fd>/<name>`: the kernel resolves that prefix to the directory we opened, not
// to whatever now sits at its path, so swapping a directory for a symlink after we looked at it
// (a TOCTOU race) cannot redirect us (this is openat(2) for node, which has no openat). The last
// component is always opened with O_NOFOLLOW or handled with lstat/readlink/unlink, which do
// not follow either. Without /proc (macOS), child paths are plain strings and only the last
// component is protected: callers must make sure the agent is stopped while they run.
import { constants, existsSync } from 'node:fs';
import { lstatSync } from 'node:fs';
import { chmod, lstat, mkdir, open, opendir, readdir, readlink, rmdir, symlink, unlink, type FileHandle } from 'node:fs/promises';
import type { BigIntStats, Stats } from 'node:fs';
import path from 'node:path';
import { LoopboxError } from '../common/errors.js';

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY, O_NONBLOCK } = constants;
const HAS_PROC_FD = existsSync('/proc/self/fd');

/** A directory entry name: text, or the raw bytes readdir gave when they are not UTF-8. */
export type Name = string | Buffer;

/** A directory we hold open; children are addressed relative to it, never by re-walking a path. */
export class DirHandle {
  private constructor(
    private readonly handle: FileHandle,
    /** Where this directory is, for messages only. */
    readonly display: string,
  ) {}

  /** Opens a directory without following a symlink at its last component. */
  static async open(dirPath: string): Promise<DirHandle> {
    const handle = await open(dirPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    return new DirHandle(handle, dirPath);
  }

  /** The path to use for a syscall on the child `name` (raw bytes allowed) of this directory. */
  child(name: Name): string | Buffer {
    const text = typeof name === 'string' ? name : name.toString('latin1');
    if (text.includes('/') || text === '' || text === '.' || text === '..') {
      throw new LoopboxError(`Refusing the path component ${JSON.stringify(text)} under ${this.display}`);
    }
    const prefix = HAS_PROC_FD ? `/proc/self/fd/${this.handle.fd}` : this.display;
    return typeof name === 'string' ? `${prefix}/${name}` : Buffer.concat([Buffer.from(`${prefix}/`), name]);
  }

  /** Opens the child directory `name`; undefined when it is not a real directory (symlink, file, gone). */
  async openDir(name: Name): Promise<DirHandle | undefined> {
    try {
      const handle = await open(this.child(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      return new DirHandle(handle, path.join(this.display, nameText(name)));
    } catch (error) {
      if (isFsError(error, 'ENOTDIR', 'ELOOP', 'ENOENT')) return undefined;
      throw error;
    }
  }

  /** Names in this directory as raw bytes (file names need not be UTF-8). */
  async names(): Promise<Buffer[]> {
    return readdir(HAS_PROC_FD ? `/proc/self/fd/${this.handle.fd}` : this.display, { encoding: 'buffer' });
  }

  /**
   * The names in this directory, streamed in chunks (opendir, not readdir): a directory of
   * 100 000 entries is never held as one listing.
   */
  async *nameChunks(size = 256): AsyncGenerator<Buffer[]> {
    const dir = await opendir(HAS_PROC_FD ? `/proc/self/fd/${this.handle.fd}` : this.display, { encoding: 'buffer' as BufferEncoding, bufferSize: size });
    let chunk: Buffer[] = [];
    for await (const entry of dir) {
      chunk.push(entry.name as unknown as Buffer);
      if (chunk.length >= size) {
        yield chunk;
        chunk = [];
      }
    }
    if (chunk.length) yield chunk;
  }

  /**
   * lstat with nanosecond times and 64-bit inode numbers (the snapshot's stat cache needs both),
   * synchronous: a walk lstats a chunk of at most a few hundred names in one go, which costs
   * microseconds each instead of a thread-pool round trip each.
   */
  lstatBigSync(name: Name): BigIntStats | undefined {
    try {
      return lstatSync(this.child(name), { bigint: true, throwIfNoEntry: false });
    } catch (error) {
      if (isFsError(error, 'ENOENT')) return undefined;
      throw error;
    }
  }

  /**
   * Opens the regular file `name` for reading (O_NOFOLLOW, O_NONBLOCK as in readFile); the
   * caller reads and closes it. Undefined when it is gone or no longer a regular file.
   */
  async openFile(name: Name): Promise<{ handle: FileHandle; stats: BigIntStats } | 'unreadable' | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(this.child(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    } catch (error) {
      if (isFsError(error, 'EACCES', 'EPERM')) return 'unreadable';
      if (isFsError(error, 'ELOOP', 'ENOENT', 'ENXIO')) return undefined;
      throw error;
    }
    const stats = await handle.stat({ bigint: true });
    if (!stats.isFile()) {
      await handle.close();
      return undefined;
    }
    return { handle, stats };
  }

  async lstat(name: Name): Promise<Stats | undefined> {
    try {
      return await lstat(this.child(name));
    } catch (error) {
      if (isFsError(error, 'ENOENT')) return undefined;
      throw error;
    }
  }

  async readlink(name: Name): Promise<Buffer> {
    return readlink(this.child(name), { encoding: 'buffer' });
  }

  /**
   * Reads the regular file `name`, at most `limit` bytes. O_NOFOLLOW refuses a symlink swapped in
   * after lstat; O_NONBLOCK keeps a swapped-in FIFO from blocking the open. Returns undefined when
   * the thing there is no longer a regular file, 'too-large' past the limit, 'unreadable' when
   * permissions forbid it (files the container's user made private).
   */
  async readFile(name: Name, limit: number): Promise<{ content: Buffer; executable: boolean } | 'too-large' | 'unreadable' | undefined> {
    const opened = await this.openFile(name);
    if (!opened || opened === 'unreadable') return opened;
    const { handle, stats } = opened;
    try {
      if (stats.size > BigInt(limit)) return 'too-large';
      // Read until EOF, not just `size`: the file may grow while we read.
      const chunks: Buffer[] = [];
      let total = 0;
      for (;;) {
        const chunk = Buffer.alloc(Math.min(1024 * 1024, limit + 1 - total) || 1);
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > limit) return 'too-large';
        chunks.push(chunk.subarray(0, bytesRead));
      }
      return { content: Buffer.concat(chunks, total), executable: (stats.mode & 0o100n) !== 0n };
    } finally {
      await handle.close();
    }
  }

  /** Creates the child file `name` fresh (O_CREAT|O_EXCL never opens an existing file or link). */
  async createFile(name: Name, content: Uint8Array, mode: number): Promise<void> {
    const handle = await open(this.child(name), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    try {
      await handle.writeFile(content);
      // The umask may have cut bits; the mode git recorded is what the file must have.
      await handle.chmod(mode);
    } finally {
      await handle.close();
    }
  }

  async createSymlink(name: Name, target: Buffer): Promise<void> {
    await symlink(target, this.child(name));
  }

  async mkdir(name: Name): Promise<void> {
    await mkdir(this.child(name), { mode: 0o755 });
  }

  /** Removes the child `name` whatever it is; a directory is emptied through handles first. */
  async remove(name: Name): Promise<boolean> {
    const stats = await this.lstat(name);
    if (!stats) return false;
    if (!stats.isDirectory()) {
      await unlink(this.child(name));
      return true;
    }
    let sub = await this.openDir(name).catch((error: unknown) => {
      if (isFsError(error, 'EACCES', 'EPERM')) return 'unreadable' as const;
      throw error;
    });
    if (sub === 'unreadable') {
      // A mode-000 directory the agent made: give ourselves (its owner, or root) access first.
      await chmod(this.child(name), 0o700);
      sub = await this.openDir(name);
    }
    if (!sub) return this.remove(name); // raced: it stopped being a directory
    try {
      // Chunked: a directory of 100 000 entries is never listed at once; each chunk's entries
      // are gone before the next is read, so the stream never skips or repeats one.
      for (;;) {
        let removed = 0;
        for await (const chunk of sub.nameChunks(512)) {
          for (const child of chunk) if (await sub.remove(child)) removed += 1;
          break;
        }
        if (!removed) break;
      }
    } finally {
      await sub.close();
    }
    await rmdir(this.child(name));
    return true;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** Opens (and with `create`, makes) each directory of `relDir` below `root`, replacing any non-directory in the way. */
export async function openSubdir(root: DirHandle, parts: readonly string[], create: boolean): Promise<DirHandle | undefined> {
  let current = root;
  for (const part of parts) {
    let next = await current.openDir(part);
    if (!next && create) {
      // Whatever is there (the agent's symlink to elsewhere, a file, a FIFO) is unlinked, not followed.
      await current.remove(part);
      await current.mkdir(part);
      next = await current.openDir(part);
      if (!next) throw new LoopboxError(`${path.join(current.display, part)} changed while loopbox was restoring it`);
    }
    if (current !== root) await current.close();
    if (!next) return undefined;
    current = next;
  }
  return current;
}

/** Closes a handle from openSubdir unless it is the root the caller owns. */
export async function closeSubdir(root: DirHandle, dir: DirHandle): Promise<void> {
  if (dir !== root) await dir.close();
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A file name as a string, or undefined when its bytes are not UTF-8 (git paths would not round-trip). */
export function decodeName(raw: Buffer): string | undefined {
  try {
    const text = utf8.decode(raw);
    return Buffer.from(text, 'utf8').equals(raw) ? text : undefined;
  } catch {
    return undefined;
  }
}

function nameText(name: Name): string {
  return typeof name === 'string' ? name : (decodeName(name) ?? name.toString('latin1'));
}

export function isFsError(error: unknown, ...codes: string[]): boolean {
  return error instanceof Error && 'code' in error && codes.includes(String((error as NodeJS.ErrnoException).code));
}
