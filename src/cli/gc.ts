// `loopbox gc`: remove what runs that are no longer alive left behind (loopbox-labelled containers,
// networks, volumes; task worktrees whose repository is gone). Wiring only; the work is in src/runs.
import type { Command } from 'commander';
import { gc, pruneDeadWorktrees } from '../index.js';
import { type CliContext, err, out } from './context.js';
import { type ProgramResult, example } from './options.js';

export function registerGc(program: Command, ctx: CliContext, result: ProgramResult): void {
  program
    .command('gc')
    .description('remove containers, networks and volumes left by runs that are no longer alive (only loopbox-labelled ones)')
    .option('--dry-run', 'list what would be removed')
    .option('--all', 'remove everything loopbox labelled, live runs and the model server included')
    .addHelpText('after', example('loopbox gc --dry-run'))
    .action(async (opts: { dryRun?: boolean; all?: boolean }) => {
      const res = await gc(ctx.docker, { dryRun: opts.dryRun ?? false, all: opts.all ?? false });
      const verb = opts.dryRun ? 'would remove' : 'removed';
      for (const r of res.removed) out(`${verb} ${r.kind} ${r.name} (run ${r.labels['loopbox.run-id'] ?? '?'})`);
      for (const f of res.failed) err(`could not remove ${f.resource.kind} ${f.resource.name}: ${f.error}`);
      // Task worktrees whose repository is gone go too; git forgets registrations of gone folders.
      const wts = await pruneDeadWorktrees(undefined, opts.dryRun ?? false);
      for (const dir of wts.removed) out(`${verb} worktree ${dir} (its repository is gone)`);
      err(`${verb} ${res.removed.length + wts.removed.length}, kept ${res.kept.length}${res.failed.length ? `, failed ${res.failed.length}` : ''}`);
      if (res.failed.length) result.exitCode = 1;
    });
}
