// What every command shares: the result main.ts turns into the exit code, and the parsers of
// option values (each says what it expected and what arrived).
import { InvalidArgumentError } from 'commander';
import { parseDuration } from '../index.js';

/** Set by a command's action; main.ts is the only place that turns it into the exit code. */
export interface ProgramResult {
  exitCode: number;
}

/** A repeatable option: each use adds one value. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function positiveInt(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`expected a positive integer, got "${v}"`);
  return Number(v);
}

export function nonNegativeInt(v: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`expected a non-negative integer, got "${v}"`);
  return Number(v);
}

export function port(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError(`expected a port 0-65535, got "${v}"`);
  return Number(v);
}

export function duration(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined) throw new InvalidArgumentError(`expected a duration like "90s" or "20m", got "${value}"`);
  return ms;
}

/** The "Example:" block at the end of a command's help. */
export function example(text: string): string {
  return `\nExample:\n  ${text}\n`;
}
