import { packageVersion } from '../common/version.js';

/** The images loopbox builds from `images/<name>/Dockerfile`. */
export const IMAGE_NAMES = ['sentry', 'agent', 'llama-cpu', 'runner'] as const;
export type ImageName = (typeof IMAGE_NAMES)[number];
/** What a loop on this machine needs; the runner image only serves `loopbox run --swarm`. */
export const LOCAL_IMAGE_NAMES: readonly ImageName[] = ['sentry', 'agent', 'llama-cpu'];

/**
 * Toolchains `loopbox images build --toolchain` adds to the agent image, each as
 * `loopbox/verify-<toolchain>` from `images/verify-<toolchain>/Dockerfile`: the agent image has
 * Node 18 but no npm, Python, Go or Rust, so a project's own test command cannot run there.
 */
export const TOOLCHAINS = ['node', 'python', 'go', 'rust'] as const;
export type Toolchain = (typeof TOOLCHAINS)[number];
export type ToolchainImageName = `verify-${Toolchain}`;
/** Every image loopbox can build. */
export type BuildableImage = ImageName | ToolchainImageName;

export function toolchainImage(toolchain: Toolchain): ToolchainImageName {
  return `verify-${toolchain}`;
}

/** The base each Dockerfile's `ARG BASE_IMAGE` defaults to, and the Debian suite that makes it offline. */
export const IMAGE_BASES: Record<ImageName, { base: string; suite: string }> = {
  sentry: { base: 'debian:bookworm-slim', suite: 'bookworm' },
  agent: { base: 'debian:bookworm-slim', suite: 'bookworm' },
  'llama-cpu': { base: 'debian:sid-slim', suite: 'sid' },
  // The Node binary copied in is this machine's: bookworm's glibc matches the Debian it is built on.
  runner: { base: 'debian:bookworm-slim', suite: 'bookworm' },
};

/**
 * `loopbox/<name>:<tag>`. The tag is the package version; LOOPBOX_IMAGE_TAG overrides it so that
 * two checkouts of loopbox on one engine (a developer's branches, CI next to a user) each keep
 * their own images instead of rebuilding each other's.
 */
export function imageRef(name: BuildableImage, version = process.env.LOOPBOX_IMAGE_TAG || packageVersion()): string {
  return `loopbox/${name}:${version}`;
}
