// Reading git's streamed output (`cat-file --batch`, `-z` listings) without holding more than
// one chunk of it: the verify base (src/verify/base.ts) streams a 200 MB blob into a file and a
// 100,000-entry diff record by record through this.
import type { Readable } from 'node:stream';
import { LoopboxError } from '../common/errors.js';

/** Reads lines and exact byte counts from a stream, holding at most one chunk at a time. */
export class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly it: AsyncIterator<Buffer>;

  constructor(stream: Readable) {
    this.it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  private async more(): Promise<boolean> {
    const next = await this.it.next();
    if (next.done) return false;
    this.buf = this.buf.length ? Buffer.concat([this.buf, next.value]) : next.value;
    return true;
  }

  private async need(): Promise<void> {
    if (!(await this.more())) throw new LoopboxError('git ended its output early while loopbox built the verify copy');
  }

  async line(): Promise<Buffer> {
    return this.until(10);
  }

  /** The bytes up to the next `byte` (not included); the separator is consumed. */
  async until(byte: number): Promise<Buffer> {
    for (;;) {
      const at = this.buf.indexOf(byte);
      if (at !== -1) {
        const out = this.buf.subarray(0, at);
        this.buf = this.buf.subarray(at + 1);
        return out;
      }
      await this.need();
    }
  }

  /** Like `until`, but undefined at a clean end of the stream (nothing left over). */
  async untilOrEnd(byte: number): Promise<Buffer | undefined> {
    for (;;) {
      const at = this.buf.indexOf(byte);
      if (at !== -1) return this.until(byte);
      if (!(await this.more())) {
        if (this.buf.length) throw new LoopboxError('git output ended in the middle of a record');
        return undefined;
      }
    }
  }

  /** Hands the next `n` bytes to `sink` piece by piece (at most one chunk held at a time). */
  async each(n: number, sink: (piece: Buffer) => void | Promise<void>): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!this.buf.length) await this.need();
      const piece = this.buf.subarray(0, Math.min(left, this.buf.length));
      this.buf = this.buf.subarray(piece.length);
      left -= piece.length;
      await sink(piece);
    }
  }

  async bytes(n: number): Promise<Buffer> {
    while (this.buf.length < n) await this.need();
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}
