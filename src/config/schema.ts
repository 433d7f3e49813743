// The `loopbox.yaml` schema. Every key has a default (docs/configuration.md lists them);
// unknown keys are errors, so a typo never silently falls back to a default.
import { z } from 'zod';
import { scheduleSchema, serveSchema } from './triggers.js';
import { notifySchema, pushOption } from './deliver.js';
import { clusterSchema } from './cluster.js';
import { REPORT_PRESETS, REPORT_PRESET_NAMES, type ReportPresetName } from '../verify/presets.js';
import { REPORT_FORMATS } from '../verify/report.js';
import { duration, size } from './unit-schemas.js';

/** `host:port` or `ip:port` the sandbox may reach besides the model. */
const endpoint = z.string().regex(/^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected "host:port"');

export const sandboxSchema = z
  .strictObject({
    image: z.string().min(1).optional().describe('Agent image; default loopbox/agent:<version>'),
    memory: size.prefault('4g'),
    cpus: z.number().positive().max(256).default(2),
    pids: z.number().int().min(16).max(65536).default(512),
    allow: z.array(endpoint).default([]),
    /** The worktree plus notes may grow to this during an iteration; at the limit the agent is stopped. */
    disk: size.prefault('10g'),
    /** Extra sysctls are not configurable: the sentry owns the namespace. */
  })
  .prefault({});

/**
 * `model.escalate` (issue 20): after `after` iterations that failed verification, or on a stall,
 * the agent's model requests go through the sandbox's gateway to this OpenAI-compatible endpoint.
 * The gateway adds the key (read on the host from the variable `apiKeyEnv`); the agent never
 * sees it. docs/configuration.md and docs/security-model.md.
 */
export const escalateSchema = z
  .strictObject({
    /** Base URL (…/v1), http:// or https:// (TLS from the gateway, system CA store). No credentials in it. */
    endpoint: z.url().refine((u) => {
      try {
        const url = new URL(u);
        return (url.protocol === 'http:' || url.protocol === 'https:') && !url.username && !url.password && !url.search && !url.hash;
      } catch {
        return false;
      }
    }, 'expected an http:// or https:// URL without credentials, query or fragment: put the key in the environment variable named by model.escalate.apiKeyEnv'),
    // It goes into a commit trailer and the gateway's request: one line, printable.
    // eslint-disable-next-line no-control-regex -- refusing control characters is the point
    model: z.string().regex(/^[^\u0000-\u001f\u007f"\\]+$/, 'expected a model name on one line, without quotes or backslashes'),
    /** The name of the host environment variable that holds the key (unset: no Authorization header). */
    apiKeyEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name like ESCALATE_API_KEY').optional(),
    /** Escalate after this many iterations that failed verification (a stall escalates earlier). */
    after: z.number().int().min(1).default(2),
    /** Escalated tokens (uncached prompt + completion) in all; past it the loop goes back to the local model for good. */
    tokenBudget: z.number().int().min(1).optional(),
  })
  .optional();

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
    /** The sandbox's model gateway refuses request bodies larger than this (HTTP 413). */
    maxRequestBody: size.prefault('16m'),
    /** The gateway lowers `max_tokens` of every completion request to at most this. */
    maxTokens: z.number().int().min(1).default(32768),
    escalate: escalateSchema,
  })
  .refine((m) => m.endpoint === undefined || m.endpoint.startsWith('http://'), {
    message: 'expected an http:// URL: the sandbox\'s model gateway reads every request and response, so it cannot carry TLS',
    path: ['endpoint'],
  })
  .prefault({});

export const imagesSchema = z
  .strictObject({
    caCerts: z.array(z.string()).default([]),
    mirror: z.url().optional(),
  })
  .prefault({});

const argv = z.array(z.string()).min(1, 'expected a non-empty argv list like ["npm", "test"]');

export const agentSchema = z
  .strictObject({
    type: z.enum(['opencode', 'command']).default('opencode'),
    /** argv for `type: command`; gets LOOPBOX_MODEL_URL, LOOPBOX_TASK_FILE, LOOPBOX_ITERATION... */
    command: argv.optional(),
    timeout: duration.prefault('20m'),
    /** Extra instructions appended to the built-in OpenCode prompt. */
    prompt: z.string().optional(),
    /** OpenCode's view of the model's limits (its first prompt alone is ~30k tokens). */
    contextLimit: z.number().int().min(1024).default(65536),
    outputLimit: z.number().int().min(256).default(4096),
    /** Agent stdout+stderr kept per iteration (head and tail); the bytes between are counted, not kept. */
    maxOutput: size.prefault('8m'),
  })
  .prefault({});

/** `verify.report`: a preset name, or where the runner writes which format (issue 7 item 5). */
const reportSchema = z.union([
  z.enum(REPORT_PRESET_NAMES as [ReportPresetName, ...ReportPresetName[]]).transform((name) => ({ format: REPORT_PRESETS[name].format, path: REPORT_PRESETS[name].path, preset: name })),
  z.strictObject({
    format: z.enum(REPORT_FORMATS as ['junit', 'tap', 'go-json']),
    path: z.string().min(1).refine((p) => !p.includes('\0'), 'expected a path without NUL'),
  }),
], { error: `expected a preset (${REPORT_PRESET_NAMES.join(', ')}) or { format: ${REPORT_FORMATS.join(' | ')}, path: "<file>" }` });

export const verifySchema = z
  .strictObject({
    /** The verify command, from the host's config only (never from the worktree). */
    command: argv.optional(),
    image: z.string().min(1).optional().describe('default: the agent image'),
    timeout: duration.prefault('10m'),
    /** The test report the harness reads; without it, "verified" rests on the exit code alone. */
    report: reportSchema.optional(),
    /** The verify copy (built from the commit's tree) is refused past this many bytes. */
    maxCopy: size.prefault('2g'),
  })
  .prefault({});

export const loopSchema = z
  .strictObject({
    maxIterations: z.number().int().min(1).max(10_000).default(10),
    /** Stop when the tree is unchanged for this many iterations in a row. */
    noProgress: z.number().int().min(1).default(2),
    /** Stop when a tree repeats one seen within the last N iterations (oscillation). */
    oscillationWindow: z.number().int().min(2).default(6),
    /** Wall-clock budget per task. */
    budget: duration.optional(),
    /** Token budget per task (uncached prompt + completion tokens, metered by the sandbox's model gateway, which refuses the request past it with 429). */
    tokenBudget: z.number().int().min(1).optional(),
    /** After the loop: push the verified commit to a remote branch (docs/configuration.md). */
    push: pushOption,
    /** After a push: open or update a draft pull request with `gh`. */
    pullRequest: z.boolean().default(false),
    /** How long a loop waits for the Docker engine to answer again after it went away mid-iteration. */
    engineWait: duration.prefault('3m'),
  })
  .prefault({});

/**
 * `review:`: a reviewer model the host asks before a loop may end `done` (docs/loop.md). The
 * key is read from the named environment variable on the host, at request time: never from
 * this file, never passed to a container.
 */
export const reviewSchema = z
  .strictObject({
    /** An OpenAI-compatible base URL (…/v1). Credentials in the URL are refused: they would sit in a file. */
    endpoint: z.url().refine((u) => {
      try {
        const url = new URL(u);
        return !url.username && !url.password;
      } catch {
        return false;
      }
    }, 'expected a URL without credentials: put the key in the environment variable named by review.apiKeyEnv'),
    // It goes into a commit trailer: one line, printable.
    // eslint-disable-next-line no-control-regex -- refusing control characters is the point
    model: z.string().regex(/^[^\u0000-\u001f\u007f]+$/, 'expected a model name on one line'),
    /** The name of the environment variable that holds the key (unset: no Authorization header). */
    apiKeyEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name like REVIEW_API_KEY').optional(),
    when: z.enum(['on-verified', 'never']).default('on-verified'),
    /** The diff sent is cut at this many bytes; the cut is reported to the reviewer and in the record. */
    maxDiffBytes: size.prefault('200k'),
    /** One request (each attempt) may take this long. */
    timeout: duration.prefault('2m'),
    /** Dollars (or any currency) per million input / output tokens: the cost shows in records and the summary. */
    price: z.strictObject({ inputPerMTok: z.number().min(0), outputPerMTok: z.number().min(0) }).optional(),
  })
  .optional();

export const DEFAULT_PROTECTED = ['loopbox.yaml', 'AGENTS.md', '.loopbox/**', 'tasks/**'];

export const configSchema = z
  .strictObject({
    sandbox: sandboxSchema,
    model: modelSchema,
    images: imagesSchema,
    agent: agentSchema,
    verify: verifySchema,
    loop: loopSchema,
    /** Globs (relative to the repo root) the agent may not change: reverted, reported, never committed. */
    protectedPaths: z.array(z.string().min(1)).default([]),
    /** Task files (globs) `loopbox run` uses when given none. */
    tasks: z.array(z.string().min(1)).default(['tasks/*.md']),
    /** `loopbox schedule`: cron entries that start loops. */
    schedule: scheduleSchema,
    /** `loopbox serve`: the webhook / trigger endpoint. */
    serve: serveSchema,
    /** An optional reviewer model that must approve verified work before `done`. */
    review: reviewSchema,
    /** Tell a webhook or a command when loops end (docs/notify.md). */
    notify: notifySchema,
    /** `loopbox run --swarm`: each task as a Docker Swarm job (docs/scaling.md). */
    cluster: clusterSchema,
  })
  .prefault({});

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
