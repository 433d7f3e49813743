// Watches what the agent writes to the host during an iteration (the worktree and its notes)
// against `sandbox.disk`. Measuring a tree costs a walk, so a cheap check runs every second
// first: the growth of the file system's used space since the iteration began. Only when that
// growth could have crossed the limit is the tree walked; at the limit the agent is stopped.
import { lstat, readdir, statfs } from 'node:fs/promises';
import path from 'node:path';

export interface DiskWatchOptions {
  dirs: string[];
  limitBytes: number;
  /** The trees' size when the loop session began (one walk per session, not per iteration). */
  baselineBytes: number;
  /** Called once, when the limit is reached. */
  onLimit: (reason: string) => void;
  intervalMs?: number;
}

export class DiskWatch {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private fired = false;

  private constructor(
    private readonly options: DiskWatchOptions,
    private readonly startUsed: number,
    private readonly startSize: number,
  ) {}

  static async start(options: DiskWatchOptions): Promise<DiskWatch> {
    const watch = new DiskWatch(options, await fsUsed(options.dirs[0]!), options.baselineBytes);
    watch.timer = setInterval(() => void watch.tick(), options.intervalMs ?? 1000);
    watch.timer.unref();
    return watch;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.busy || this.fired) return;
    this.busy = true;
    try {
      const grown = (await fsUsed(this.options.dirs[0]!)) - this.startUsed;
      if (this.startSize + grown < this.options.limitBytes) return;
      const size = await treesSize(this.options.dirs);
      if (size >= this.options.limitBytes) {
        this.fired = true;
        this.stop();
        this.options.onLimit(`the worktree and notes reached ${size} bytes, over sandbox.disk (${this.options.limitBytes})`);
      }
    } catch {
      // A file vanished mid-walk: measure again next tick.
    } finally {
      this.busy = false;
    }
  }
}

async function fsUsed(dir: string): Promise<number> {
  const s = await statfs(dir);
  return (s.blocks - s.bfree) * s.bsize;
}

/** Bytes of regular files under `dirs` (links not followed; each inode counted once). */
export async function treesSize(dirs: string[]): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) {
        const st = await lstat(full).catch(() => undefined);
        if (!st) continue;
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
        total += st.blocks * 512;
      }
    }
  };
  for (const d of dirs) await walk(d);
  return total;
}
