// Issue 7.3 / 7.4 / 13 end to end: an adversarial `command` agent plants everything a snapshot
// must survive. The loop must not end in `error`, must commit the agent's real edit, skip each
// planted path with a reason the next iteration reads, remove what can never be committed (a
// nested repository with core.fsmonitor, FIFOs, sockets...), and verify exactly the committed tree.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import type { IterationRecord } from '../../src/loop/state.js';
import { cli, makeLoopRepo, parseJsonLines, remaining, useTestRun } from './helpers.js';

// Iteration 1 plants the traps and fixes the bug; later iterations only record what they read.
const AGENT = String.raw`
set -u
if [ "$LOOPBOX_ITERATION" = 1 ]; then
  sed -i 's/return a - b;/return a + b;/' calc.js
  ln -s ../../../../../../etc/passwd escape-link
  ln -s /etc escape-abs
  mkfifo a-fifo
  python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind("a-socket")' 2>/dev/null || node -e 'require("net").createServer().listen("a-socket", () => process.exit(0))'
  mkdir -p nested && (cd nested && git init -q 2>/dev/null && git config core.fsmonitor "touch /tmp/pwned; false") || { mkdir -p nested/.git; printf '[core]\n\tfsmonitor = touch /tmp/pwned\n' > nested/.git/config; }
  echo gitfile > sub-gitfile; mkdir -p deep; printf 'gitdir: /tmp\n' > deep/.git
  d=deepdir; for i in $(seq 1 300); do d="$d/d"; done; mkdir -p "$d"
  touch "$(printf 'new\nline')" "$(printf 'bad\377name')"
  mkdir -p many; (cd many && seq 1 3000 | xargs touch)
  echo secret > private; chmod 000 private; mkdir closed; chmod 000 closed
  # Verify must see the tree, not the worktree: a file planted where verify would read it first.
  echo "process.exit(0)" > test/calc.test.js
fi
cp "$LOOPBOX_FEEDBACK_FILE" "$LOOPBOX_NOTES_DIR/feedback-$LOOPBOX_ITERATION.md"
`;

describe('snapshot against an adversarial agent (real Docker, git)', () => {
  const { track } = useTestRun('snapshot');

  it('skips symlinks out, FIFOs, sockets, nested .git, deep dirs, odd names, mode-000 paths; commits the fix; never ends in error', async () => {
    const c = track(
      await makeLoopRepo({
        agent: { type: 'command', command: ['bash', '-c', AGENT], timeout: '60s' },
        verify: { command: ['node', 'test/calc.test.js'], timeout: '60s' },
        protectedPaths: ['test/**'],
        loop: { maxIterations: 2, noProgress: 3 },
        sandbox: { memory: '1g', cpus: 1, pids: 256 },
      }),
    );
    const res = await cli(['--config', c.config, 'run', '--repo', c.repo, '--json', path.join(c.repo, 'tasks', 'fix-add.md')], { timeoutMs: 300_000 });
    const events = parseJsonLines<{ type: string; record?: IterationRecord; summary?: { runId: string; endState: string; worktree: string; runDir: string } }>(res.stdout);
    const end = events.find((e) => e.type === 'loop-end')?.summary;
    const iterations = events.filter((e) => e.type === 'iteration-end').map((e) => e.record!);
    expect(end?.endState, res.all.slice(-3000)).toBe('done');
    const first = iterations[0]!;
    // Verified against the tree: the protected test is the base's, so the real fix is what passed.
    expect(first.verified).toBe(true);
    expect(first.protectedViolations).toContain('test/calc.test.js');
    const { stdout: calc } = await execa('git', ['show', 'loopbox/fix-add:calc.js'], { cwd: c.repo });
    expect(calc).toContain('return a + b;');
    const { stdout: files } = await execa('git', ['ls-tree', '-r', '--name-only', 'loopbox/fix-add'], { cwd: c.repo });
    for (const bad of ['a-fifo', 'a-socket', 'nested/.git', 'deep/.git']) expect(files.split('\n')).not.toContain(bad);
    // Symlinks are committed as links (their target text), never followed.
    const { stdout: link } = await execa('git', ['cat-file', '-p', 'loopbox/fix-add:escape-link'], { cwd: c.repo });
    expect(link).toBe('../../../../../../etc/passwd');
    const skipped = first.skipped.map((k) => `${k.path}: ${k.reason}`).join('\n');
    for (const p of [/a-fifo: not a regular file.*fifo/, /a-socket: not a regular file.*socket/, /nested\/\.git: a nested \.git/, /deep\/\.git: a nested \.git/, /deeper than/, /not valid UTF-8/]) {
      expect(skipped).toMatch(p);
    }
    // What can never be committed is gone from the worktree: no nested repo for the user's git.
    const ls = await execa('ls', ['-a', end!.worktree]);
    expect(ls.stdout.split('\n')).not.toContain('a-fifo');
    await expect(readFile(path.join(end!.worktree, 'nested', '.git', 'config'))).rejects.toThrow();
    await expect(readFile(path.join(end!.worktree, 'deep', '.git'))).rejects.toThrow();
    expect(await remaining(end!.runId)).toEqual([]);
  }, 360_000);
});
