// The verify base: a host directory that holds exactly one git tree, written from git objects
// alone (never from the worktree), and moved from one tree to the next by applying only the
// difference (`git diff-tree`), so its cost follows what changed, not what exists (issue 13).
//
// Each verify container gets it read-only and copies it into its own size-capped tmpfs
// /workspace (verify.ts): the base itself is never written by anything but this module, so
// nothing a verify wrote can survive into the next one.
//
// Soundness of the incremental update:
// - `state.json` names the tree the base holds; it is removed before any change and written
//   after the last one, so an interrupted or failed update leaves no state and the next update
//   rebuilds from empty.
// - Removals run first (a pass over the diff), additions second (another pass): a symlink
//   replaced by a directory of the same name is gone before anything is written below that
//   name, and a directory replaced by a file is emptied first.
// - Every path component is checked with lstat (a real directory, never a symlink) before use,
//   and files are created with O_EXCL|O_NOFOLLOW: even a base that somehow differs from the
//   state makes the update fail (and the next one rebuild), never write through a link.
// - Contents stream from one `git cat-file --batch` (raw bytes, no filters) in chunks of
//   entries: neither a whole file nor the whole listing is held in memory.
// - File system calls are synchronous (a round trip through libuv's pool per small file made a
//   100,000-file build take minutes); the event loop gets a turn after every chunk.
import { closeSync, constants, type Stats, fchmodSync, lstatSync, mkdirSync, openSync, rmdirSync, rmSync, symlinkSync, unlinkSync, writeSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { LoopboxError } from '../common/errors.js';
import { ByteReader } from '../git/byte-reader.js';
import { git, hardenedArgs, hardenedEnv } from '../git/hardened.js';
import { isFsError } from '../git/safe-fs.js';

const { O_RDONLY, O_DIRECTORY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;
const CHUNK = 512;

export interface BaseState {
  tree: string;
  /** Bytes of file contents and symlink targets in the base. */
  bytes: number;
  /** Files, symlinks and submodule directories in the base. */
  entries: number;
}

export interface BaseUpdateOptions {
  /** The update fails past this many bytes of contents (verify.maxCopy). */
  maxBytes: number;
  /** Epoch milliseconds after which the update gives up (verify.timeout). */
  deadline: number;
}

export interface BaseUpdate extends BaseState {
  /** Paths removed and written by this update (a full build counts every entry). */
  removed: number;
  written: number;
  rebuilt: boolean;
}

/** The update ran past its deadline. */
export class BaseTimeoutError extends LoopboxError {}

interface DiffRecord {
  oldMode: string;
  newMode: string;
  newOid: string;
  path: Buffer;
}

export class VerifyBase {
  /** The directory that holds the tree's files (mount this, read-only). */
  readonly root: string;
  private readonly stateFile: string;

  constructor(
    private readonly repo: string,
    /** A directory only this base uses; created if missing. */
    readonly dir: string,
  ) {
    this.root = path.join(dir, 'tree');
    this.stateFile = path.join(dir, 'state.json');
  }

  async state(): Promise<BaseState | undefined> {
    try {
      const parsed = JSON.parse(await readFile(this.stateFile, 'utf8')) as Partial<BaseState>;
      if (typeof parsed.tree === 'string' && typeof parsed.bytes === 'number' && typeof parsed.entries === 'number') return parsed as BaseState;
    } catch (error) {
      if (!isFsError(error, 'ENOENT') && !(error instanceof SyntaxError)) throw error;
    }
    return undefined;
  }

  /** Makes the base hold exactly `treeish`'s tree. */
  async update(treeish: string, options: BaseUpdateOptions): Promise<BaseUpdate> {
    const tree = (await git(['rev-parse', '--verify', '--end-of-options', `${treeish}^{tree}`], { cwd: this.repo })).trim();
    const previous = await this.state();
    if (previous?.tree === tree) return { ...previous, removed: 0, written: 0, rebuilt: false };
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // From here until the end the base holds no known tree.
    await rm(this.stateFile, { force: true });
    let from = previous?.tree;
    const counts = { bytes: previous?.bytes ?? 0, entries: previous?.entries ?? 0, removed: 0, written: 0 };
    if (!from) {
      await rm(this.root, { recursive: true, force: true });
      from = (await git(['hash-object', '-t', 'tree', '--stdin'], { cwd: this.repo, input: '' })).trim();
      counts.bytes = 0;
      counts.entries = 0;
    }
    await mkdir(this.root, { recursive: true });
    await chmod(this.root, 0o755);
    const checkTime = (): void => {
      if (Date.now() > options.deadline) throw new BaseTimeoutError('The verify base update ran past verify.timeout');
    };

    // Pass 1: everything the old tree has that the new one does not have as it is.
    for await (const chunk of this.diff(from, tree)) {
      checkTime();
      await turn();
      for (const r of chunk) {
        if (r.oldMode === '000000') continue;
        const gone = this.remove(r.path);
        counts.bytes -= gone;
        counts.entries -= 1;
        counts.removed += 1;
      }
    }
    // Pass 2: what the new tree has that was not there, contents streamed from git.
    const cat = this.catFile();
    const reader = new ByteReader(cat.stdout);
    // Directories this pass made or checked: only this module writes the base.
    const known = new Set<string>();
    try {
      for await (const chunk of this.diff(from, tree)) {
        await turn();
        const adds = chunk.filter((r) => r.newMode !== '000000');
        const blobs = adds.filter((r) => r.newMode !== '160000');
        if (blobs.length) cat.stdin.write(blobs.map((r) => `${r.newOid}\n`).join(''));
        for (const r of adds) {
          checkTime();
          const size = await this.write(r, reader, known, (n) => {
            if (counts.bytes + n > options.maxBytes) {
              throw new LoopboxError(`The tree ${tree.slice(0, 12)} holds more than verify.maxCopy (${options.maxBytes} bytes) of files`, {
                hint: 'Raise verify.maxCopy, or have the agent remove large files.',
              });
            }
          });
          counts.bytes += size;
          counts.entries += 1;
          counts.written += 1;
        }
      }
    } finally {
      cat.stdin.end();
      cat.stdout.destroy();
      await cat.catch(() => undefined);
    }
    const state: BaseState = { tree, bytes: counts.bytes, entries: counts.entries };
    const temp = `${this.stateFile}.tmp`;
    await writeFile(temp, JSON.stringify(state));
    await rename(temp, this.stateFile);
    return { ...state, removed: counts.removed, written: counts.written, rebuilt: previous === undefined };
  }

  /** Removes the base entirely. */
  async dispose(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }

  /** `diff-tree -r` between two trees, streamed in chunks of records. */
  private async *diff(from: string, to: string): AsyncGenerator<DiffRecord[]> {
    const proc = execa('git', hardenedArgs(['diff-tree', '-r', '-z', '--no-renames', '--raw', '--full-index', from, to]), {
      cwd: this.repo,
      env: hardenedEnv(),
      extendEnv: false,
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
      buffer: { stdout: false, stderr: true },
      encoding: 'buffer',
      reject: false,
    });
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
    const done = await proc;
    if (done.exitCode !== 0 && !done.isTerminated) {
      throw new LoopboxError(`git diff-tree ${from.slice(0, 12)} ${to.slice(0, 12)} failed: ${String(done.stderr).trim()}`);
    }
  }

  private catFile(): ResultPromise<{ stdin: 'pipe'; stdout: 'pipe'; stderr: 'pipe'; buffer: { stdout: false; stderr: true }; encoding: 'buffer'; reject: false }> {
    return execa('git', hardenedArgs(['cat-file', '--batch']), {
      cwd: this.repo,
      env: hardenedEnv(),
      extendEnv: false,
      stdin: 'pipe',
      stdout: 'pipe',
      stderr: 'pipe',
      buffer: { stdout: false, stderr: true },
      encoding: 'buffer',
      reject: false,
    });
  }

  private full(rel: Buffer): Buffer {
    return Buffer.concat([Buffer.from(`${this.root}/`), rel]);
  }

  /** The parent directories of `rel`, shallowest first, as full paths. */
  private parents(rel: Buffer): Buffer[] {
    const out: Buffer[] = [];
    for (let at = rel.indexOf(0x2f); at !== -1; at = rel.indexOf(0x2f, at + 1)) out.push(this.full(rel.subarray(0, at)));
    return out;
  }

  /** Removes `rel` (its parents must be real directories); returns the bytes it held. Prunes emptied parents. */
  private remove(rel: Buffer): number {
    const parents = this.parents(rel);
    for (const p of parents) {
      if (!lstatOrUndefined(p)?.isDirectory()) throw inconsistent(rel);
    }
    const target = this.full(rel);
    const st = lstatOrUndefined(target);
    if (!st) throw inconsistent(rel);
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
  private async write(r: DiffRecord, reader: ByteReader, known: Set<string>, reserve: (bytes: number) => void): Promise<number> {
    for (const p of this.parents(r.path)) {
      const key = p.toString('latin1');
      if (known.has(key)) continue;
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
      } else if (!st.isDirectory()) throw inconsistent(r.path);
      known.add(key);
    }
    const target = this.full(r.path);
    if (r.newMode === '160000') {
      // A submodule is an empty directory, as in the task worktree.
      mkdirSync(target, { mode: 0o755 });
      await chmod(target, 0o755);
      known.add(target.toString('latin1'));
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

function inconsistent(rel: Buffer): LoopboxError {
  return new LoopboxError(`The verify base does not match its recorded tree at ${rel.toString('utf8')}`, {
    hint: 'The next verify rebuilds it from git objects.',
  });
}
