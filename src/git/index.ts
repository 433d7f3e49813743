// Host-side git for loopbox: hardened runner, task worktrees, snapshots and commits.
export { GitError, git, gitBytes, gitStatus, hardenedArgs, hardenedEnv, resolveCommit, revParse } from './hardened.js';
export type { GitFailure, GitOptions, GitResult } from './hardened.js';
export { matchesAny, matchesPattern } from './glob.js';
export {
  DEFAULT_AUTHOR,
  DEFAULT_MAX_DEPTH,
  DEFAULT_MAX_FILES,
  DEFAULT_MAX_FILE_BYTES,
  LOOPBOX_DIR,
  commitSnapshot,
  ensureTaskWorktree,
  isDirtyRepo,
  restorePaths,
  snapshotWorktree,
  syncWorktreeIndex,
  taskBranch,
} from './worktree.js';
export { treeOf } from './tree.js';
export type { Author, ChangedPath, EnsureWorktreeOptions, EntryMode, RestoreResult, SkippedPath, Snapshot, SnapshotOptions, TaskWorktree, TreeEntry } from './worktree.js';
