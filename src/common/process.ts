// Whether a process that wrote a record (a run, a task lock) is still the one alive: a pid and
// the kernel's start time for it, so a recycled pid is not mistaken for a live owner.
import { readFileSync } from 'node:fs';

/** The start time of `pid` as the kernel reports it (/proc/<pid>/stat field 22), or null off Linux. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parens: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

/** The process `pid` exists and is the same one (same kernel start time), not a recycled pid. */
export function isProcessAlive(pid: number, pidStart: string | null): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const start = processStartTime(pid);
  return pidStart === null || start === null || start === pidStart;
}
