// The agent's output, kept within a byte cap: the first half of the cap as it came, the last
// half as a ring, and a count of what was dropped between. An agent that prints without end
// cannot fill the host's disk or memory.
import { open, type FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';

export class CappedLog extends Writable {
  private head = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  /** Bytes written past the cap and not kept. */
  dropped = 0;
  private file: Promise<FileHandle>;
  private finished = false;

  constructor(
    readonly path: string,
    private readonly cap: number,
  ) {
    super();
    this.file = open(path, 'w', 0o600);
    this.file.catch(() => undefined);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (error?: Error | null) => void): void {
    const headRoom = Math.max(0, Math.floor(this.cap / 2) - this.head);
    const first = chunk.subarray(0, headRoom);
    const rest = chunk.subarray(first.length);
    if (rest.length) {
      this.tail.push(rest);
      this.tailBytes += rest.length;
      const tailCap = this.cap - Math.floor(this.cap / 2);
      while (this.tailBytes > tailCap && this.tail.length) {
        const over = this.tailBytes - tailCap;
        const oldest = this.tail[0]!;
        if (oldest.length <= over) {
          this.tail.shift();
          this.tailBytes -= oldest.length;
          this.dropped += oldest.length;
        } else {
          this.tail[0] = oldest.subarray(over);
          this.tailBytes -= over;
          this.dropped += over;
        }
      }
    }
    if (!first.length) return done();
    this.head += first.length;
    this.file.then((f) => f.write(first)).then(() => done(), done);
  }

  /** Writes the kept tail (with a note of what was dropped) and closes the file; idempotent. */
  async close(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await new Promise<void>((resolve) => {
      if (this.writableFinished) resolve();
      else this.end(() => resolve());
    });
    const f = await this.file;
    try {
      if (this.dropped) await f.write(`\n[loopbox: ${this.dropped} bytes of agent output dropped here; the cap is agent.maxOutput]\n`);
      for (const b of this.tail) await f.write(b);
    } finally {
      await f.close();
    }
  }
}
