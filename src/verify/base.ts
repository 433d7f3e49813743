// The verify base: a host directory that holds exactly one git tree, written from git objects
// alone (never from the worktree), and moved from one tree to the next by applying only the
// difference (`git diff-tree`), so its cost follows what changed, not what exists (issue 13).
//
// Each verify container gets it read-only and copies it into its own size-capped tmpfs
// /workspace (verify.ts): the base itself is never written by anything but this module, so
// nothing a verify wrote can survive into the next one.
//
// Soundness of the incremental update: `state.json` names the tree the base holds; it is removed
// before any change and written after the last one, so an interrupted or failed update leaves no
// state and the next update rebuilds from empty. The writing itself (removals first, lstat on
// every component, O_EXCL|O_NOFOLLOW, contents streamed from git) is git/checkout.ts's, shared
// with the task worktree's checkout.
import { chmod, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { LoopboxError } from '../common/errors.js';
import { writeFileAtomic } from '../common/files.js';
import { writeTree } from '../git/checkout.js';
import { git } from '../git/hardened.js';
import { isFsError } from '../git/safe-fs.js';

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
    const from = previous?.tree;
    const counts = { bytes: previous?.bytes ?? 0, entries: previous?.entries ?? 0 };
    if (!from) {
      await rm(this.root, { recursive: true, force: true });
      counts.bytes = 0;
      counts.entries = 0;
    }
    await mkdir(this.root, { recursive: true });
    await chmod(this.root, 0o755);
    const write = await writeTree(this.repo, this.root, from, tree, {
      check: () => {
        if (Date.now() > options.deadline) throw new BaseTimeoutError('The verify base update ran past verify.timeout');
      },
      reserve: (n, sofar) => {
        if (counts.bytes - sofar.bytesRemoved + sofar.bytesWritten + n > options.maxBytes) {
          throw new LoopboxError(`The tree ${tree.slice(0, 12)} holds more than verify.maxCopy (${options.maxBytes} bytes) of files`, {
            hint: 'Raise verify.maxCopy, or have the agent remove large files.',
          });
        }
      },
      describe: { what: 'The verify base', hint: 'The next verify rebuilds it from git objects.' },
    });
    counts.bytes += write.bytesWritten - write.bytesRemoved;
    counts.entries += write.written - write.removed;
    const state: BaseState = { tree, bytes: counts.bytes, entries: counts.entries };
    await writeFileAtomic(this.stateFile, JSON.stringify(state));
    return { ...state, removed: write.removed, written: write.written, rebuilt: previous === undefined };
  }

  /** Removes the base entirely. */
  async dispose(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}
