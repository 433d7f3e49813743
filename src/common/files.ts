// Files written whole or not at all: a reader (another loopbox process, a crash's next start)
// sees the old content or the new, never half of it.
import { rename, rm, writeFile } from 'node:fs/promises';

/** Writes `data` to a temporary file beside `file`, then renames it over `file`. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode?: number): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, data, mode === undefined ? undefined : { mode });
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw error;
  }
}

/** `value` as indented JSON, written atomically. */
export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(value, null, 2)}\n`);
}
