// The loop's brakes, as a pure function of what happened so far: no I/O, unit-tested.

export type EndState = 'done' | 'capped' | 'stalled' | 'timed-out-budget' | 'aborted' | 'error';

/** Exit codes per end state (docs/loop.md). 2 is reserved for bad input/config. */
export const END_STATE_EXIT: Record<EndState, number> = {
  done: 0,
  error: 1,
  capped: 3,
  stalled: 4,
  'timed-out-budget': 5,
  aborted: 130,
};

export interface BrakeLimits {
  maxIterations: number;
  noProgress: number;
  oscillationWindow: number;
  budgetMs?: number | undefined;
  tokenBudget?: number | undefined;
}

export interface BrakeHistory {
  /** Tree id before the first iteration (the branch head's tree). */
  baseTree: string;
  /** Tree id after each iteration, in order (after protected paths were reverted). */
  trees: string[];
  verified: boolean;
  elapsedMs: number;
  tokens: number;
}

export interface BrakeDecision {
  state: EndState;
  reason: string;
}

/** What ends the loop now, or undefined to go on. Checked after each iteration. */
export function checkBrakes(limits: BrakeLimits, history: BrakeHistory): BrakeDecision | undefined {
  const n = history.trees.length;
  if (history.verified) return { state: 'done', reason: `verification passed after ${n} iteration(s)` };
  const all = [history.baseTree, ...history.trees];
  // No progress: the tree did not change for `noProgress` iterations in a row.
  let unchanged = 0;
  for (let i = all.length - 1; i > 0 && all[i] === all[i - 1]; i -= 1) unchanged += 1;
  if (unchanged >= limits.noProgress) {
    return { state: 'stalled', reason: `no change to the worktree in the last ${unchanged} iteration(s)` };
  }
  // Oscillation: the latest tree equals one seen earlier in the window (but not the previous one,
  // which is the no-progress case above).
  const latest = all[all.length - 1]!;
  const window = all.slice(Math.max(0, all.length - 1 - limits.oscillationWindow), all.length - 2);
  const seenAt = window.lastIndexOf(latest);
  if (n >= 2 && seenAt !== -1 && all[all.length - 2] !== latest) {
    const back = window.length - seenAt + 1;
    return { state: 'stalled', reason: `oscillating: the worktree returned to the state of ${back} iteration(s) ago` };
  }
  if (limits.budgetMs !== undefined && history.elapsedMs >= limits.budgetMs) {
    return { state: 'timed-out-budget', reason: `wall-clock budget of ${Math.round(limits.budgetMs / 1000)} s used` };
  }
  if (limits.tokenBudget !== undefined && history.tokens >= limits.tokenBudget) {
    return { state: 'timed-out-budget', reason: `token budget of ${limits.tokenBudget} used (${history.tokens})` };
  }
  if (n >= limits.maxIterations) return { state: 'capped', reason: `iteration cap of ${limits.maxIterations} reached` };
  return undefined;
}
