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

export function imageRef(name: ImageName, version = packageVersion()): string {
  return `loopbox/${name}:${version}`;
}
