import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { ConfigError, describe } from '../common/errors.js';
import { type Config, configSchema } from './schema.js';

export const CONFIG_FILE = 'loopbox.yaml';

/**
 * Loads `file` (or `<dir>/loopbox.yaml` when it exists). A missing default file means defaults;
 * a missing explicit file is an error. All schema issues are reported at once, each with the
 * path of the key, what was expected and what was found.
 */
export async function loadConfig(options: { file?: string | undefined; dir?: string } = {}): Promise<{ config: Config; file?: string }> {
  const explicit = options.file !== undefined;
  const file = path.resolve(options.file ?? path.join(options.dir ?? process.cwd(), CONFIG_FILE));
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (!explicit && (error as NodeJS.ErrnoException).code === 'ENOENT') return { config: parseConfig({}) };
    throw new ConfigError(`Cannot read config file ${file}: ${describe(error)}`, [], {
      hint: explicit ? 'Check the --config path.' : 'Run `loopbox init` to write one.',
    });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text) ?? {};
  } catch (error) {
    const where = error instanceof YAMLParseError && error.linePos ? ` (line ${error.linePos[0].line})` : '';
    throw new ConfigError(`${file} is not valid YAML${where}: ${describe(error).split('\n')[0]}`);
  }
  return { config: parseConfig(raw, file), file };
}

export function parseConfig(raw: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  throw new ConfigError(`${source} has ${result.error.issues.length} problem(s):`, result.error.issues.map((i) => formatIssue(i, raw)), {
    hint: 'See docs/configuration.md for every key and its default.',
  });
}

function formatIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  const where = issue.path.length ? issue.path.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') {
    const prefix = issue.path.length ? `${issue.path.join('.')}.` : '';
    return `${issue.keys.map((k) => prefix + k).join(', ')}: unknown key${issue.keys.length > 1 ? 's' : ''}`;
  }
  const found = valueAt(raw, issue.path);
  const got = found === undefined ? 'nothing' : `${JSON.stringify(found)} (${Array.isArray(found) ? 'array' : typeof found})`;
  return `${where}: ${issue.message.replace(/^Invalid input: /, '')}; got ${got}`;
}

function valueAt(raw: unknown, pathKeys: PropertyKey[]): unknown {
  let current = raw;
  for (const key of pathKeys) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}
