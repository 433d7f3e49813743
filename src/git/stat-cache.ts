// The snapshot's stat cache: which blob each worktree file held when loopbox last read it, so
// that a snapshot reads and hashes only files whose stat data changed (issue 13), like git's
// index does for `git status`.
//
// The agent is hostile and controls everything in the worktree except the kernel's clock, so
// the key holds only what it cannot forge together with unchanged content:
// - ctime (ns): the kernel sets it to "now" on every write, truncate, chmod, chown, link and
//   unlink of the inode; no syscall sets it to a chosen value (utimensat sets atime and mtime
//   only) and changing the clock needs CAP_SYS_TIME, which the sandbox drops.
// - dev + ino: a file replaced (rename over it, delete and create, hardlink swap) is another
//   inode; an inode number the file system reuses is a new inode with a new ctime.
// - size, mode and mtime: cheap extra checks (the agent can set mtime, so it never counts alone).
// The racy-git rule: an entry whose ctime is not older than this cache's start minus a margin
// (file system timestamp granularity plus the kernel's coarse clock lag) could be changed again
// within the same ctime tick after loopbox read it, so it is not stored and is hashed next time.
// The cache lives in the worktree's git admin directory, which the agent never sees (the
// worktree's `.git` is masked in the sandbox). Anything odd in it (wrong version, another
// directory, unparsable) means an empty cache: where in doubt, hash. See docs/security-model.md.
import type { BigIntStats } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../common/files.js';

/** Entries changed this close to (or after) the cache's start are racy: 2 s covers 1 s and 2 s timestamp granularity. */
export const RACY_MARGIN_NS = 2_000_000_000n;
const VERSION = 1;

interface CachedStat {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mode: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  oid: string;
}

type Row = [path: string, dev: string, ino: string, size: string, mode: string, mtimeNs: string, ctimeNs: string, oid: string];

export class StatCache {
  private readonly next = new Map<string, CachedStat>();

  private constructor(
    private readonly dir: string,
    private readonly previous: Map<string, CachedStat>,
    /** When the snapshot that fills this cache started (wall clock, ns). */
    readonly startNs: bigint,
  ) {}

  /** An empty cache for the worktree `dir`: every file is read and hashed. */
  static empty(dir: string, startNs = nowNs()): StatCache {
    return new StatCache(dir, new Map(), startNs);
  }

  /** The cache saved for `dir` in `file`, or an empty one when there is none or it is not for `dir`. */
  static async load(file: string, dir: string, startNs = nowNs()): Promise<StatCache> {
    let parsed: { version?: unknown; dir?: unknown; startNs?: unknown; rows?: unknown };
    try {
      parsed = JSON.parse(await readFile(file, 'utf8')) as typeof parsed;
    } catch {
      return StatCache.empty(dir, startNs);
    }
    if (parsed.version !== VERSION || parsed.dir !== dir || typeof parsed.startNs !== 'string' || !Array.isArray(parsed.rows)) {
      return StatCache.empty(dir, startNs);
    }
    const savedStart = BigInt(parsed.startNs);
    const entries = new Map<string, CachedStat>();
    for (const row of parsed.rows as Row[]) {
      if (!Array.isArray(row) || row.length !== 8) return StatCache.empty(dir, startNs);
      const [p, dev, ino, size, mode, mtimeNs, ctimeNs, oid] = row;
      const entry = { dev: BigInt(dev), ino: BigInt(ino), size: BigInt(size), mode: BigInt(mode), mtimeNs: BigInt(mtimeNs), ctimeNs: BigInt(ctimeNs), oid };
      // Racy when saved: never trusted, whatever the file says now.
      if (entry.ctimeNs >= savedStart - RACY_MARGIN_NS) continue;
      entries.set(p, entry);
    }
    return new StatCache(dir, entries, startNs);
  }

  /** The blob id recorded for `path` if its stat data is exactly what it was then. */
  lookup(path: string, stats: BigIntStats): string | undefined {
    const c = this.previous.get(path);
    if (!c) return undefined;
    const same =
      c.dev === stats.dev &&
      c.ino === stats.ino &&
      c.size === stats.size &&
      c.mode === stats.mode &&
      c.mtimeNs === stats.mtimeNs &&
      c.ctimeNs === stats.ctimeNs;
    return same ? c.oid : undefined;
  }

  /**
   * Records what `path` held, with the stat data taken from the open file it was read through
   * (so content and stat belong to the same inode). Racy entries are left out.
   */
  record(path: string, stats: BigIntStats, oid: string): void {
    if (stats.ctimeNs >= this.startNs - RACY_MARGIN_NS) return;
    this.next.set(path, { dev: stats.dev, ino: stats.ino, size: stats.size, mode: stats.mode, mtimeNs: stats.mtimeNs, ctimeNs: stats.ctimeNs, oid });
  }

  get size(): number {
    return this.next.size;
  }

  /** Writes what this snapshot recorded (write to a temporary file, then rename: never half a cache). */
  async save(file: string): Promise<void> {
    const rows: Row[] = [];
    for (const [p, c] of this.next) rows.push([p, String(c.dev), String(c.ino), String(c.size), String(c.mode), String(c.mtimeNs), String(c.ctimeNs), c.oid]);
    await writeFileAtomic(file, JSON.stringify({ version: VERSION, dir: this.dir, startNs: String(this.startNs), rows }), 0o600);
  }
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}
