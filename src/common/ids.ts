import { randomBytes } from 'node:crypto';

/** A run id: sortable by time, short enough for container names. e.g. `20261124-181950-a1b2c3`. */
export function newRunId(now = new Date()): string {
  const iso = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${iso}-${randomBytes(3).toString('hex')}`;
}

const SAFE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/** Run ids and task names end up in container names, labels and branch names: keep them tame. */
export function isSafeName(value: string): boolean {
  return SAFE.test(value);
}
