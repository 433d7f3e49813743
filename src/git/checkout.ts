// The one writer of a git tree into a host directory, from git objects alone: a full write (from
// the empty tree) for a new task worktree, and an incremental one (from the tree the directory
// holds) for the verify base (src/verify/base.ts), whose cost follows what changed, not what
// exists (issue 13). The agent's files are never read here: only `git diff-tree` and
// `git cat-file --batch` output.
//
// Soundness:
// - Removals run first (a pass over the diff), additions second (another pass): a symlink
//   replaced by a directory of the same name is gone before anything is written below that
//   name, and a directory replaced by a file is emptied first.
// - Every path component is checked with lstat (a real directory, never a symlink) before use,
//   and files are created with O_EXCL|O_NOFOLLOW: a directory that differs from the tree it is
//   said to hold makes the write fail, never write through a link.
// - Contents stream from one `git cat-file --batch` (raw bytes, no filters, no eol or ident
//   conversion) in chunks of entries: neither a whole file nor the whole listing is held.
// - File system calls are synchronous (a round trip through libuv's pool per small file made a
//   100,000-file build take minutes); the event loop gets a turn after every chunk.
import { closeSync, constants, type Stats, fchmodSync, lstatSync, mkdirSync, openSync, rmdirSync, rmSync, symlinkSync, unlinkSync, writeSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import { LoopboxError } from '../common/errors.js';
import { ByteReader } from './byte-reader.js';
import { git, gitStream } from './hardened.js';
import { isFsError } from './safe-fs.js';

const { O_RDONLY, O_DIRECTORY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;
const CHUNK = 512;

export interface TreeWriteOptions {
  /** Called before each entry: throw to stop (a deadline). */
  check?: () => void;
  /** Called with a blob's size before it is written, and what was done so far: throw to stop (a byte cap). */
  reserve?: (bytes: number, sofar: Readonly<TreeWrite>) => void;
  /** Names the directory in the error when it does not hold `from` (and what happens next). */
  describe?: { what: string; hint: string };
}

export interface TreeWrite {
  /** Paths removed and written (a full write counts every entry as written). */
  removed: number;
  written: number;
  /** Bytes of file contents and symlink targets removed and written. */
  bytesRemoved: number;
  bytesWritten: number;
}

interface DiffRecord {
  oldMode: string;
  newMode: string;
  newOid: string;
  path: Buffer;
}

/** The empty tree's id in `repo`'s object format. */
export async function emptyTree(repo: string): Promise<string> {
  return (await git(['hash-object', '-t', 'tree', '--stdin'], { cwd: repo, input: '' })).trim();
}

/**
 * Moves the directory `root` (which must exist) from holding the tree `from` to holding the tree
 * `to`. With `from` undefined the directory must hold nothing of a tree yet (a new worktree: only
 * its `.git` file), and every entry of `to` is written.
 */
export async function writeTree(repo: string, root: string, from: string | undefined, to: string, options: TreeWriteOptions = {}): Promise<TreeWrite> {
  const writer = new DirWriter(root, options.describe ?? { what: `The directory ${root}`, hint: 'Remove it and let loopbox write it again.' });
  const start = from ?? (await emptyTree(repo));
  const counts: TreeWrite = { removed: 0, written: 0, bytesRemoved: 0, bytesWritten: 0 };
  // Pass 1: everything the old tree has that the new one does not have as it is.
  if (from !== undefined) {
    for await (const chunk of diff(repo, start, to)) {
      await turn();
      for (const r of chunk) {
        options.check?.();
        if (r.oldMode === '000000') continue;
        counts.bytesRemoved += writer.remove(r.path);
        counts.removed += 1;
      }
    }
  }
  // Pass 2: what the new tree has that was not there, contents streamed from git.
  const cat = gitStream(['cat-file', '--batch'], { cwd: repo });
  const reader = new ByteReader(cat.stdout);
  try {
    for await (const chunk of diff(repo, start, to)) {
      await turn();
      const adds = chunk.filter((r) => r.newMode !== '000000');
      const blobs = adds.filter((r) => r.newMode !== '160000');
      if (blobs.length) cat.stdin.write(blobs.map((r) => `${r.newOid}\n`).join(''));
      for (const r of adds) {
        options.check?.();
        counts.bytesWritten += await writer.write(r, reader, (n) => options.reserve?.(n, counts));
        counts.written += 1;
      }
    }
  } finally {
    cat.stdin.end();
    cat.stdout.destroy();
    await cat.done().catch(() => undefined);
  }
  return counts;
}

/** `diff-tree -r` between two trees, streamed in chunks of records. */
async function* diff(repo: string, from: string, to: string): AsyncGenerator<DiffRecord[]> {
  const proc = gitStream(['diff-tree', '-r', '-z', '--no-renames', '--raw', '--full-index', from, to], { cwd: repo });
  proc.stdin.end();
  const reader = new ByteReader(proc.stdout);
  let chunk: DiffRecord[] = [];
  try {
    for (;;) {
      const meta = await reader.untilOrEnd(0);
      if (meta === undefined) break;
      const [oldMode, newMode, , newOid] = meta.toString('latin1').slice(1).split(' ');
      const p = await reader.until(0);
      if (!oldMode || !newMode || !newOid) throw new LoopboxError(`git diff-tree gave a record loopbox cannot read: ${meta.toString('latin1')}`);
      checkPath(p);
      chunk.push({ oldMode, newMode, newOid, path: Buffer.from(p) });
      if (chunk.length >= CHUNK) {
        yield chunk;
        chunk = [];
      }
    }
    if (chunk.length) yield chunk;
  } finally {
    proc.stdout.destroy();
  }
  await proc.done();
}

class DirWriter {
  /** Directories this write made or checked: nothing else writes below `root` meanwhile. */
  private readonly known = new Set<string>();

  constructor(
    private readonly root: string,
    private readonly describe: { what: string; hint: string },
  ) {}

  private full(rel: Buffer): Buffer {
    return Buffer.concat([Buffer.from(`${this.root}/`), rel]);
  }

  /** The parent directories of `rel`, shallowest first, as full paths. */
  private parents(rel: Buffer): Buffer[] {
    const out: Buffer[] = [];
    for (let at = rel.indexOf(0x2f); at !== -1; at = rel.indexOf(0x2f, at + 1)) out.push(this.full(rel.subarray(0, at)));
    return out;
  }

  private inconsistent(rel: Buffer): LoopboxError {
    return new LoopboxError(`${this.describe.what} does not match its recorded tree at ${rel.toString('utf8')}`, { hint: this.describe.hint });
  }

  /** Removes `rel` (its parents must be real directories); returns the bytes it held. Prunes emptied parents. */
  remove(rel: Buffer): number {
    const parents = this.parents(rel);
    for (const p of parents) {
      if (!lstatOrUndefined(p)?.isDirectory()) throw this.inconsistent(rel);
    }
    const target = this.full(rel);
    const st = lstatOrUndefined(target);
    if (!st) throw this.inconsistent(rel);
    let bytes = 0;
    if (st.isDirectory()) rmSync(target, { recursive: true }); // a submodule: an empty directory
    else {
      bytes = st.size;
      unlinkSync(target);
    }
    // Git trees have no empty directories: one the removal emptied goes too.
    for (const p of parents.reverse()) {
      try {
        rmdirSync(p);
      } catch (error) {
        if (isFsError(error, 'ENOTEMPTY', 'EEXIST')) break;
        throw error;
      }
    }
    return bytes;
  }

  /** Writes the entry `r` (contents next in `reader` unless a submodule); returns its bytes. */
  async write(r: DiffRecord, reader: ByteReader, reserve: (bytes: number) => void): Promise<number> {
    for (const p of this.parents(r.path)) {
      const key = p.toString('latin1');
      if (this.known.has(key)) continue;
      const st = lstatOrUndefined(p);
      if (!st) {
        mkdirSync(p);
        // Not left to the umask: the verify user reads the base through these modes.
        const fd = openSync(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
        try {
          fchmodSync(fd, 0o755);
        } finally {
          closeSync(fd);
        }
      } else if (!st.isDirectory()) throw this.inconsistent(r.path);
      this.known.add(key);
    }
    const target = this.full(r.path);
    if (r.newMode === '160000') {
      // A submodule is an empty directory, as git itself leaves it without --recurse-submodules.
      mkdirSync(target, { mode: 0o755 });
      await chmod(target, 0o755);
      this.known.add(target.toString('latin1'));
      return 0;
    }
    const header = (await reader.line()).toString('latin1');
    const [oid, type, size] = header.split(' ');
    if (oid !== r.newOid || type !== 'blob' || size === undefined) throw new LoopboxError(`git cat-file answered "${header}" for ${r.newOid}`);
    const length = Number(size);
    reserve(length);
    if (r.newMode === '120000') {
      const link = Buffer.from(await reader.bytes(length));
      symlinkSync(link, target);
    } else {
      const mode = r.newMode === '100755' ? 0o755 : 0o644;
      const fd = openSync(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
      try {
        await reader.each(length, (piece) => {
          for (let off = 0; off < piece.length; ) off += writeSync(fd, piece, off);
        });
        fchmodSync(fd, mode);
      } finally {
        closeSync(fd);
      }
    }
    await reader.bytes(1); // the newline after each object
    return length;
  }
}

function lstatOrUndefined(p: Buffer): Stats | undefined {
  try {
    return lstatSync(p);
  } catch (error) {
    if (isFsError(error, 'ENOENT')) return undefined;
    throw error;
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Tree paths from git are relative and plain; anything else is refused rather than followed. */
function checkPath(p: Buffer): void {
  for (const part of p.toString('latin1').split('/')) {
    if (part === '' || part === '.' || part === '..') throw new LoopboxError(`git diff-tree named the path ${JSON.stringify(p.toString('latin1'))}, which loopbox refuses to write`);
  }
  if (p.includes(0)) throw new LoopboxError('A tree path holds a NUL byte');
}
