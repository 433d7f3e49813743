// `cluster:` in loopbox.yaml: loops as Docker Swarm jobs (`loopbox run --swarm`), see docs/scaling.md.
import path from 'node:path';
import { z } from 'zod';
import { duration } from './unit-schemas.js';

export const clusterSchema = z
  .strictObject({
    /** `swarm`: `loopbox run` submits each task as a Swarm job (as with --swarm). */
    mode: z.enum(['local', 'swarm']).default('local'),
    /** The runner image every labelled node holds (default loopbox/runner:<version>); pinned by image id. */
    image: z.string().min(1).optional(),
    /**
     * A host folder on every labelled node, mounted into the runner at the same path: the loop's
     * clone, worktree and state live there, so the node's engine can bind-mount them into the
     * sandbox (it resolves bind mounts on the node, not inside the runner).
     */
    workDir: z
      .string()
      .refine((p) => path.isAbsolute(p) && path.normalize(p) === p && p !== '/', 'expected an absolute, normalized folder other than /')
      .default('/var/lib/loopbox-swarm'),
    /** A git URL every node can clone from and push to; unset: the host serves the repository for the run (git daemon). */
    gitUrl: z.string().min(1).optional(),
    /** The address the host's git daemon listens on (default: the swarm's advertise address, or docker0's on a one-node swarm on loopback). */
    serveAddress: z.union([z.ipv4(), z.ipv6()]).optional(),
    /** A job still not finished after this long is removed and reported timed out. */
    timeout: duration.prefault('2h'),
    /** How long a job may wait for a node (no labelled node free, image missing) before it is called unplaceable. */
    placementTimeout: duration.prefault('2m'),
  })
  .prefault({});

export type ClusterConfig = z.output<typeof clusterSchema>;
