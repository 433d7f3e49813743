// Host-side commits of a snapshot tree (compare-and-swap on the branch), and the restore of
// protected paths in the worktree from the branch tip, written by node from raw blobs.
import { LoopboxError } from '../common/errors.js';
import { git, gitStatus, resolveCommit } from './hardened.js';
import { DirHandle, closeSubdir, openSubdir } from './safe-fs.js';
import { assertRefName, isReservedGitName, lsTreeCached, lsTreePaths, readBlobs, repoInfo, requireWorktree, treeOf, writeEntry } from './tree.js';

export const DEFAULT_AUTHOR: Author = { name: 'loopbox', email: 'loopbox@localhost' };

export interface Author {
  name: string;
  email: string;
  /** Any date git accepts (e.g. ISO 8601); default now. */
  date?: string;
}

export interface RestoreResult {
  /** Paths written back with their base content. */
  restored: string[];
  /** Paths the base does not have, removed. */
  removed: string[];
}

// ---------------------------------------------------------------------------------------------
// Commit

/**
 * Commits `tree` on `branch` with `parent` as its only parent and moves the branch there, only if
 * it still points at `parent` (compare-and-swap). An unchanged tree is allowed: the caller decides.
 */
export async function commitSnapshot(
  repo: string,
  branch: string,
  tree: string,
  parent: string,
  message: string,
  author: Author = DEFAULT_AUTHOR,
): Promise<string> {
  const info = await repoInfo(repo);
  const ref = branch.startsWith('refs/') ? branch : `refs/heads/${branch}`;
  await assertRefName(info.top, ref);
  const parentId = await resolveCommit(info.top, parent);
  if (!parentId) throw new LoopboxError(`The parent ${parent} is not a commit in ${info.top}`);
  const { stdout: kind } = await gitStatus(['cat-file', '-t', tree], { cwd: info.top, okExitCodes: [1, 128] });
  if (kind.trim() !== 'tree') throw new LoopboxError(`${tree} is not a tree in ${info.top}`);
  const env: Record<string, string> = {
    GIT_AUTHOR_NAME: author.name,
    GIT_AUTHOR_EMAIL: author.email,
    GIT_COMMITTER_NAME: author.name,
    GIT_COMMITTER_EMAIL: author.email,
  };
  if (author.date) Object.assign(env, { GIT_AUTHOR_DATE: author.date, GIT_COMMITTER_DATE: author.date });
  // The message goes on stdin (-F -) verbatim; commit-tree applies no cleanup and runs no editor.
  const commit = (
    await git(['commit-tree', '--no-gpg-sign', tree, '-p', parentId, '-F', '-'], {
      cwd: info.top,
      env,
      input: message.endsWith('\n') ? message : `${message}\n`,
    })
  ).trim();
  const subject = message.split('\n')[0] ?? '';
  await git(['update-ref', '-m', `loopbox: ${subject}`, ref, commit, parentId], {
    cwd: info.top,
    hint: `${ref} no longer points at ${parentId.slice(0, 12)}: something else moved the branch; re-read it and snapshot again.`,
  });
  return commit;
}

// ---------------------------------------------------------------------------------------------
// Restore protected paths

/**
 * Puts `paths` back as they are in `headCommit`: writes the base blob (or symlink), or removes the
 * path if the base lacks it. Parent directories the agent replaced (e.g. by a symlink to outside)
 * are unlinked and made again; nothing is ever written through a symlink.
 */
export async function restorePaths(repo: string, dir: string, headCommit: string, paths: readonly string[]): Promise<RestoreResult> {
  const info = await repoInfo(repo);
  const wt = await requireWorktree(info, dir);
  const head = await resolveCommit(info.top, headCommit);
  if (!head) throw new LoopboxError(`Cannot restore from ${headCommit}: not a commit in ${info.top}`);
  const wanted = [...new Set(paths)].sort();
  for (const p of wanted) checkRelativePath(p);
  // Only the entries at and below the paths asked for: the cost follows them, not the tree.
  const base = wanted.length > 1000 ? await lsTreeCached(info.top, await treeOf(info.top, head)) : await lsTreePaths(info.top, head, wanted);
  const result: RestoreResult = { restored: [], removed: [] };
  const root = await DirHandle.open(wt.path);
  try {
    for (const p of wanted) {
      const parts = checkRelativePath(p);
      const entry = base.get(p);
      if (entry && entry.mode !== '160000') {
        const [blob] = (await readBlobs(info.top, [entry.oid])).values();
        await writeEntry(root, p, entry.mode, blob ?? Buffer.alloc(0));
        result.restored.push(p);
      } else if (entry || [...base.keys()].some((k) => k.startsWith(`${p}/`))) {
        // A directory (or submodule) in the base: make sure a real directory is there again.
        await closeSubdir(root, (await openSubdir(root, parts, true))!);
        result.restored.push(p);
      } else {
        const name = parts.pop()!;
        // Parents are not created: if one is not a real directory, nothing of ours is under it.
        const parent = await openSubdir(root, parts, false);
        if (!parent) continue;
        try {
          if (await parent.remove(name)) result.removed.push(p);
        } finally {
          await closeSubdir(root, parent);
        }
      }
    }
  } finally {
    await root.close();
  }
  return result;
}

function checkRelativePath(p: string): string[] {
  const parts = p.split('/');
  // A nested `.git` may be named: restoring removes it (no base tree holds such a path). The
  // top-level one is the worktree's link to the repository.
  if (p === '' || parts.some((c) => c === '' || c === '.' || c === '..') || isReservedGitName(parts[0]!) || p.includes('\0')) {
    throw new LoopboxError(`Refusing to restore ${JSON.stringify(p)}: not a plain relative path inside the worktree`);
  }
  return parts;
}
