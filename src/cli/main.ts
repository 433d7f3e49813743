#!/usr/bin/env node
// The one exit point: commands throw, this turns errors into messages and exit codes.
// First Ctrl+C stops gracefully (the running sandbox is killed and cleaned up, records kept);
// a second one forces an immediate exit; either way the exit code is 130.
import { CommanderError } from 'commander';
import { LoopboxError } from '../index.js';
import { CliContext, err } from './context.js';
import type { ProgramResult } from './options.js';
import { buildProgram } from './program.js';

const controller = new AbortController();
let interrupts = 0;
const SHUTDOWN_CAP_MS = 30_000;

function onSignal(signal: NodeJS.Signals): void {
  interrupts += 1;
  if (interrupts === 1) {
    err(`loopbox: ${signal}: stopping gracefully (again to force)`);
    controller.abort(new Error(signal));
    setTimeout(() => {
      err('loopbox: shutdown took too long, forcing');
      process.exit(130);
    }, SHUTDOWN_CAP_MS).unref();
  } else {
    err('loopbox: forced exit');
    process.exit(130);
  }
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const result: ProgramResult = { exitCode: 0 };
const program = buildProgram(new CliContext(controller.signal), result);
program.exitOverride();

try {
  await program.parseAsync(process.argv);
  process.exitCode = controller.signal.aborted ? 130 : result.exitCode;
} catch (error) {
  process.exitCode = report(error);
}

function report(error: unknown): number {
  if (error instanceof CommanderError) {
    // commander already printed usage errors; help and version exit 0.
    return error.exitCode === 0 ? 0 : 2;
  }
  if (controller.signal.aborted) {
    err('loopbox: stopped');
    return 130;
  }
  if (error instanceof LoopboxError) {
    err(`loopbox: ${error.message}`);
    if (error.hint) err(`hint: ${error.hint}`);
    if (process.env.LOOPBOX_DEBUG && error.stack) err(error.stack);
    return error.exitCode;
  }
  err(`loopbox: unexpected error: ${error instanceof Error ? (process.env.LOOPBOX_DEBUG ? error.stack : error.message) : String(error)}`);
  // Every failure loopbox expects is a LoopboxError with a hint; reaching this line is a bug.
  err('hint: this is a loopbox bug: run again with LOOPBOX_DEBUG=1 for the stack, and report it with the command you ran.');
  return 1;
}
