// zod schemas of the human units in loopbox.yaml, shared by every section's schema.
import { z } from 'zod';
import { parseDuration, parseSize } from './units.js';

/** "90s", "20m", "1h30m" (or a number of ms) to milliseconds. */
export const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: 'expected a duration like "90s", "20m" or "1h30m"' });
    return z.NEVER;
  }
  return ms;
});

/** "512m", "4g" (or a number of bytes) to bytes. */
export const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: 'expected a size like "512m" or "4g"' });
    return z.NEVER;
  }
  return bytes;
});
