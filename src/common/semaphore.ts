/** A counting semaphore: at most `permits` holders at once, the rest wait in FIFO order. */
export class Semaphore {
  private waiting: Array<() => void> = [];
  private held = 0;

  constructor(readonly permits: number) {
    if (!Number.isInteger(permits) || permits < 1) throw new Error(`Semaphore needs a positive integer, got ${permits}`);
  }

  get inUse(): number {
    return this.held;
  }

  get queued(): number {
    return this.waiting.length;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (this.held < this.permits) {
      this.held += 1;
      return this.releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        this.waiting = this.waiting.filter((w) => w !== wake);
        reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(wake);
    });
    this.held += 1;
    return this.releaser();
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.held -= 1;
      this.waiting.shift()?.();
    };
  }
}
