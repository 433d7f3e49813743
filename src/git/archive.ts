// A tar stream of a git tree, made from git objects alone: what the verify container receives is
// exactly the tree that gets committed (issue 7.3), never the worktree's file system (which may
// hold a FIFO, a symlink out of the tree, a nested `.git`, a file loopbox skipped).
//
// Not `git archive`: it obeys `export-ignore` and `export-subst` in the tree's own
// .gitattributes, which the agent writes. Here `ls-tree` names the entries and one
// `cat-file --batch` streams their raw bytes (no filters); nothing in the tree changes how it
// is read. Blobs are streamed into the tar entry by entry: a 200 MB file is never held whole.
import { Readable } from 'node:stream';
import { execa } from 'execa';
import tarStream from 'tar-stream';
import { LoopboxError } from '../common/errors.js';
import { hardenedArgs, hardenedEnv } from './hardened.js';
import { listTree, type TreeListing } from './worktree.js';

export interface TreeArchiveOptions {
  /** Owner of every entry in the archive. */
  uid: number;
  gid: number;
  /** The archive is refused (the stream fails) when the tree's blobs add up to more. */
  maxBytes: number;
  /**
   * A directory every entry goes under (e.g. `workspace`), for extraction at `/`: Docker refuses
   * a relative symlink that climbs above the directory it extracts into, and the agent may commit
   * one (issue 7.4). Under `/` it is a link inside the throwaway container, as in the tree.
   */
  prefix?: string;
}

/** The tree `tree` of the repository `repo` as a tar stream (directories 0755, files 0644/0755, symlinks as links). */
export function treeArchive(repo: string, tree: string, options: TreeArchiveOptions): Readable {
  const pack = tarStream.pack();
  const fail = (error: unknown): void => {
    pack.destroy(error instanceof Error ? error : new Error(String(error)));
  };
  void produce(repo, tree, options, pack).catch(fail);
  return pack as unknown as Readable;
}

async function produce(repo: string, tree: string, options: TreeArchiveOptions, pack: tarStream.Pack): Promise<void> {
  const entries = await listTree(repo, tree);
  const total = entries.reduce((a, e) => a + e.size, 0);
  if (total > options.maxBytes) {
    throw new LoopboxError(`The tree ${tree.slice(0, 12)} holds ${total} bytes of files, more than the verify copy allows (${options.maxBytes})`, {
      hint: 'Raise verify.maxCopyBytes, or have the agent remove large files.',
    });
  }
  const owner = { uid: options.uid, gid: options.gid, mtime: new Date(0) };
  const pre = options.prefix ? `${options.prefix}/` : '';
  if (options.prefix) pack.entry({ ...owner, name: pre, type: 'directory', mode: 0o755 });
  const dirs = new Set<string>();
  const addDirs = (p: string): void => {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i += 1) {
      const dir = parts.slice(0, i).join('/');
      if (dirs.has(dir)) continue;
      dirs.add(dir);
      pack.entry({ ...owner, name: `${pre}${dir}/`, type: 'directory', mode: 0o755 });
    }
  };
  const blobs = entries.filter((e) => e.mode !== '160000');
  const proc = execa('git', hardenedArgs(['cat-file', '--batch']), {
    cwd: repo,
    env: hardenedEnv(),
    extendEnv: false,
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    encoding: 'buffer',
    reject: false,
  });
  proc.stdin.end(blobs.map((e) => `${e.oid}\n`).join(''));
  const reader = new ByteReader(proc.stdout);
  let sent = 0;
  try {
    for (const e of entries) {
      addDirs(e.path);
      if (e.mode === '160000') {
        // A submodule is an empty directory, as in the task worktree.
        if (!dirs.has(e.path)) pack.entry({ ...owner, name: `${pre}${e.path}/`, type: 'directory', mode: 0o755 });
        dirs.add(e.path);
        continue;
      }
      const header = (await reader.line()).toString('latin1');
      const [oid, type, size] = header.split(' ');
      if (oid !== e.oid || type !== 'blob' || size === undefined) throw new LoopboxError(`git cat-file answered "${header}" for ${e.oid} (${e.path})`);
      const length = Number(size);
      // Counted as streamed too: the listing's sizes can be estimates.
      sent += length;
      if (sent > options.maxBytes) throw new LoopboxError(`The verify copy passed ${options.maxBytes} bytes at ${e.path}`, { hint: 'Raise verify.maxCopyBytes, or have the agent remove large files.' });
      if (e.mode === '120000') {
        const target = await reader.bytes(length);
        pack.entry({ ...owner, name: `${pre}${e.path}`, type: 'symlink', linkname: target.toString('utf8'), mode: 0o777 });
      } else {
        const entry = pack.entry({ ...owner, name: `${pre}${e.path}`, type: 'file', size: length, mode: e.mode === '100755' ? 0o755 : 0o644 });
        await reader.pipe(length, entry);
        await new Promise<void>((resolve, reject) => {
          entry.once('finish', resolve);
          entry.once('error', reject);
          (entry as unknown as NodeJS.WritableStream).end();
        });
      }
      await reader.bytes(1); // the newline after each object
    }
  } finally {
    proc.stdout.destroy();
    await proc.catch(() => undefined);
  }
  pack.finalize();
}

/** Reads lines and exact byte counts from a stream, holding at most one chunk at a time. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly it: AsyncIterator<Buffer>;

  constructor(stream: Readable) {
    this.it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  private async more(): Promise<void> {
    const next = await this.it.next();
    if (next.done) throw new LoopboxError('git cat-file ended early while loopbox built the verify copy');
    this.buf = this.buf.length ? Buffer.concat([this.buf, next.value]) : next.value;
  }

  async line(): Promise<Buffer> {
    for (;;) {
      const nl = this.buf.indexOf(10);
      if (nl !== -1) {
        const out = this.buf.subarray(0, nl);
        this.buf = this.buf.subarray(nl + 1);
        return out;
      }
      await this.more();
    }
  }

  async bytes(n: number): Promise<Buffer> {
    while (this.buf.length < n) await this.more();
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Writes the next `n` bytes to `out`, waiting for it to drain. */
  async pipe(n: number, out: NodeJS.WritableStream): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!this.buf.length) await this.more();
      const piece = this.buf.subarray(0, Math.min(left, this.buf.length));
      this.buf = this.buf.subarray(piece.length);
      left -= piece.length;
      if (!out.write(piece)) await new Promise<void>((resolve) => out.once('drain', resolve));
    }
  }
}

export type { TreeListing };
