import { describe, expect, it } from 'vitest';
import { Semaphore } from '../../src/common/semaphore.js';

describe('Semaphore', () => {
  it('never lets more than `permits` holders in, and serves waiters in order', async () => {
    const sem = new Semaphore(2);
    let active = 0;
    let peak = 0;
    const order: number[] = [];
    await Promise.all(
      [0, 1, 2, 3, 4].map(async (i) => {
        const release = await sem.acquire();
        active += 1;
        peak = Math.max(peak, active);
        order.push(i);
        await new Promise((r) => setTimeout(r, 10));
        active -= 1;
        release();
        release(); // idempotent
      }),
    );
    expect(peak).toBe(2);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(sem.inUse).toBe(0);
  });

  it('a waiter can give up when its signal aborts', async () => {
    const sem = new Semaphore(1);
    const release = await sem.acquire();
    const controller = new AbortController();
    const waiting = sem.acquire(controller.signal);
    controller.abort(new Error('stop'));
    await expect(waiting).rejects.toThrow('stop');
    expect(sem.queued).toBe(0);
    release();
    expect(sem.inUse).toBe(0);
  });
});
