import { packageVersion } from '../common/version.js';

/** The images loopbox builds from `images/<name>/Dockerfile`. */
export const IMAGE_NAMES = ['sentry', 'agent', 'llama-cpu'] as const;
export type ImageName = (typeof IMAGE_NAMES)[number];

/** The base each Dockerfile's `ARG BASE_IMAGE` defaults to, and the Debian suite that makes it offline. */
export const IMAGE_BASES: Record<ImageName, { base: string; suite: string }> = {
  sentry: { base: 'debian:bookworm-slim', suite: 'bookworm' },
  agent: { base: 'debian:bookworm-slim', suite: 'bookworm' },
  'llama-cpu': { base: 'debian:sid-slim', suite: 'sid' },
};

/**
 * `loopbox/<name>:<tag>`. The tag is the package version; LOOPBOX_IMAGE_TAG overrides it so that
 * two checkouts of loopbox on one engine (a developer's branches, CI next to a user) each keep
 * their own images instead of rebuilding each other's.
 */
export function imageRef(name: ImageName, version = process.env.LOOPBOX_IMAGE_TAG || packageVersion()): string {
  return `loopbox/${name}:${version}`;
}
