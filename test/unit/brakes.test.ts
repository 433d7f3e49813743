import { describe, expect, it } from 'vitest';
import { checkBrakes, type BrakeLimits } from '../../src/loop/brakes.js';

const limits: BrakeLimits = { maxIterations: 5, noProgress: 2, oscillationWindow: 6 };
const history = (trees: string[], extra: Partial<{ verified: boolean; elapsedMs: number; tokens: number }> = {}) => ({
  baseTree: 'T0',
  trees,
  verified: false,
  elapsedMs: 0,
  tokens: 0,
  ...extra,
});

describe('brakes', () => {
  it('goes on while the tree changes', () => {
    expect(checkBrakes(limits, history(['A']))).toBeUndefined();
    expect(checkBrakes(limits, history(['A', 'B', 'C']))).toBeUndefined();
  });

  it('ends done only when verification passed', () => {
    expect(checkBrakes(limits, history(['A'], { verified: true }))).toMatchObject({ state: 'done' });
  });

  it('stalls after N unchanged iterations, counting from the base tree', () => {
    expect(checkBrakes(limits, history(['T0']))).toBeUndefined();
    expect(checkBrakes(limits, history(['T0', 'T0']))).toMatchObject({ state: 'stalled' });
    expect(checkBrakes(limits, history(['T0', 'T0']))?.reason).toMatch(/no change.*2/);
    expect(checkBrakes(limits, history(['A', 'A']))).toBeUndefined();
    expect(checkBrakes(limits, history(['A', 'A', 'A']))).toMatchObject({ state: 'stalled' });
  });

  it('stalls when two diffs alternate', () => {
    expect(checkBrakes(limits, history(['A', 'B']))).toBeUndefined();
    expect(checkBrakes(limits, history(['A', 'B', 'A']))).toMatchObject({ state: 'stalled' });
    expect(checkBrakes(limits, history(['A', 'B', 'A']))?.reason).toMatch(/oscillating/);
    // Back to the base tree counts too (the agent undid its own work).
    expect(checkBrakes(limits, history(['A', 'T0']))).toMatchObject({ state: 'stalled' });
    expect(checkBrakes(limits, history(['A', 'T0']))?.reason).toMatch(/oscillating/);
  });

  it('does not call a repeat outside the window oscillation', () => {
    const small = { ...limits, oscillationWindow: 2, maxIterations: 50 };
    expect(checkBrakes(small, history(['A', 'B', 'C', 'D', 'A']))).toBeUndefined();
  });

  it('caps at maxIterations', () => {
    expect(checkBrakes(limits, history(['A', 'B', 'C', 'D', 'E']))).toMatchObject({ state: 'capped' });
  });

  it('stops on the wall-clock and token budgets', () => {
    expect(checkBrakes({ ...limits, budgetMs: 1000 }, history(['A'], { elapsedMs: 1500 }))).toMatchObject({ state: 'timed-out-budget' });
    expect(checkBrakes({ ...limits, tokenBudget: 100 }, history(['A'], { tokens: 150 }))).toMatchObject({ state: 'timed-out-budget' });
    expect(checkBrakes({ ...limits, tokenBudget: 100 }, history(['A'], { tokens: 150 }))?.reason).toMatch(/token/);
  });
});
