// Config keys for what happens after a loop ends (issue 18): `loop.push` and `loop.pullRequest`
// (deliver the verified branch where people work) and `notify:` (tell someone the loop ended).
// All of it runs on the host, after the sandbox is gone; nothing here reaches a container.
import { z } from 'zod';
import { ConfigError } from '../common/errors.js';
import { duration as anyDuration } from './unit-schemas.js';

const duration = anyDuration.refine((ms) => ms >= 1, 'expected a duration of at least 1 ms, like "10s" or "2m"');

/** A remote name as git allows it, or a URL of a transport loopbox allows (no ext::, no fd::). */
const remote = z
  .string()
  .min(1)
  .refine((r) => !r.startsWith('-'), 'expected a remote name or URL, not an option')
  .refine((r) => !/^(ext|fd)::/i.test(r), 'ext:: and fd:: remotes run programs; loopbox refuses them')
  // eslint-disable-next-line no-control-regex -- refusing control characters is the point
  .refine((r) => !/[\u0000-\u001f\u007f]/.test(r), 'expected one line without control characters')
  // The remote is recorded (config.json, delivery.json) and sent (notify body): a token in it
  // would go wherever those go. An ssh:// user name alone is no credential.
  .refine((r) => {
    const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)@/.exec(r);
    return !m || (m[1]!.toLowerCase() === 'ssh' && !m[2]!.includes(':'));
  }, 'expected a URL without credentials: use your ssh agent or a git credential helper (docs/configuration.md)');

export const pushSchema = z.strictObject({
  /** A remote of the repository (`origin`) or a URL (file://, ssh://, https://, git://). */
  remote: remote.default('origin'),
  /** The branch pushed; `{task}` is the task name. Never the base branch. */
  branch: z
    .string()
    .min(1)
    .regex(/^[A-Za-z0-9._/{}-]+$/, 'expected a branch name like "loopbox/{task}"')
    .refine((b) => !b.startsWith('-') && !b.includes('..') && !b.startsWith('refs/'), 'expected a plain branch name (no "..", no leading "-", no refs/ prefix)')
    .default('loopbox/{task}'),
  /** A loop that did not end `done`: push its last commit to `<branch>-wip` (`wip`) or push nothing (`skip`). */
  unverified: z.enum(['wip', 'skip']).default('skip'),
  /** One push (each attempt) may take this long. */
  timeout: duration.prefault('2m'),
});

export type PushConfig = z.output<typeof pushSchema>;

/** `loop.push`: `true`, a remote name, or the full object (each issue keeps its key's path). */
export const pushOption = z.preprocess((value) => (value === true ? {} : value === false ? undefined : typeof value === 'string' ? { remote: value } : value), pushSchema.optional());

/** `loopbox run --push [remote]`: the config's push settings with this remote (or the configured/default one). */
export function withPushRemote(push: PushConfig | undefined, remoteName: string | true): PushConfig {
  const parsed = pushSchema.safeParse({ ...(push ?? {}), ...(remoteName === true ? {} : { remote: remoteName }) });
  if (!parsed.success) {
    throw new ConfigError(
      '--push: the remote is refused.',
      parsed.error.issues.map((i) => `${['loop', 'push', ...i.path].join('.')}: ${i.message}`),
      { hint: 'Give a remote name of the repository (origin) or a URL without credentials: ssh://, https://, git:// or file://.' },
    );
  }
  return parsed.data;
}

const argv = z.array(z.string()).min(1, 'expected a non-empty argv list like ["notify-send", "loopbox"]');

export const notifySchema = z
  .strictObject({
    /** POSTed the versioned JSON body (docs/notify.md); http:// or https://. */
    webhook: z
      .url()
      .refine((u) => /^https?:\/\//i.test(u), 'expected an http:// or https:// URL')
      .refine((u) => {
        try {
          const url = new URL(u);
          return !url.username && !url.password;
        } catch {
          return false;
        }
      }, 'expected a URL without credentials: sign with notify.secretEnv instead')
      .optional(),
    /** The environment variable that holds the HMAC secret for X-Loopbox-Signature-256 (unset: unsigned). */
    secretEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name').optional(),
    /** Run on the host with the same JSON on stdin. */
    command: argv.optional(),
    /** One attempt (request or command) may take this long. */
    timeout: duration.prefault('10s'),
    /** Attempts in all, with backoff between them (1 s, 2 s, 4 s, ...). */
    attempts: z.number().int().min(1).max(10).default(3),
  })
  .optional();

export type NotifyConfig = NonNullable<z.output<typeof notifySchema>>;
