// What `loopbox run` prints for loop events, captured from stderr.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { printLoopEvent } from '../../src/cli/print.js';

afterEach(() => {
  vi.restoreAllMocks();
});

function printed(f: () => void): string {
  let text = '';
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    text += String(chunk);
    return true;
  });
  f();
  vi.restoreAllMocks();
  return text;
}

describe('printLoopEvent', () => {
  it('attack: a notice carrying text from a remote (a PR URL GitHub answered, gh stderr) prints no terminal escape or extra line', () => {
    const message = 'pull request opened: https://github.com/o/r/pull/1\u001b]0;pwned\u0007\u001b[2J\u009b31m\n[fix] done: verified';
    const text = printed(() => printLoopEvent({ type: 'notice', runId: 'r1', task: 'fix', message }));
    expect(text).toContain('pull request opened: https://github.com/o/r/pull/1');
    // eslint-disable-next-line no-control-regex -- finding control characters is the point
    expect(text.replace(/\n$/, '')).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });
});
