// The `loopbox.yaml` schema. Every key has a default (docs/configuration.md lists them);
// unknown keys are errors, so a typo never silently falls back to a default.
import { z } from 'zod';
import { parseDuration, parseSize } from './units.js';

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a duration like "90s", "20m" or "1h30m", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a size like "512m" or "4g", got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return bytes;
});

/** `host:port` or `ip:port` the sandbox may reach besides the model. */
const endpoint = z.string().regex(/^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected "host:port"');

export const sandboxSchema = z
  .strictObject({
    image: z.string().min(1).optional().describe('Agent image; default loopbox/agent:<version>'),
    memory: size.prefault('4g'),
    cpus: z.number().positive().max(256).default(2),
    pids: z.number().int().min(16).max(65536).default(512),
    allow: z.array(endpoint).default([]),
    /** Extra sysctls are not configurable: the sentry owns the namespace. */
  })
  .prefault({});

export const modelSchema = z
  .strictObject({
    gguf: z.string().optional(),
    endpoint: z.url().optional(),
    name: z.string().regex(/^[A-Za-z0-9._-]+$/).default('local'),
    image: z.string().optional(),
    ctxSize: z.number().int().min(512).default(65536),
    parallel: z.number().int().min(1).max(64).default(1),
    gpuLayers: z.number().int().min(0).default(99),
    gpus: z.union([z.literal('auto'), z.literal('all'), z.literal('none'), z.array(z.string())]).default('auto'),
    startTimeout: duration.prefault('120s'),
  })
  .prefault({});

export const imagesSchema = z
  .strictObject({
    caCerts: z.array(z.string()).default([]),
    mirror: z.url().optional(),
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    sandbox: sandboxSchema,
    model: modelSchema,
    images: imagesSchema,
  })
  .prefault({});

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
