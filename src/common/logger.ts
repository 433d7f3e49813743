import pino, { type Logger } from 'pino';

export type { Logger };

/** Logs go to stderr (stdout is for command output) or to a run's log file. */
export function createLogger(options: { level?: string; file?: string } = {}): Logger {
  const level = options.level ?? process.env.LOOPBOX_LOG_LEVEL ?? 'warn';
  if (options.file) {
    return pino({ level, base: undefined }, pino.destination({ dest: options.file, mkdir: true, sync: true }));
  }
  return pino({ level, base: undefined }, pino.destination(2));
}

export const silentLogger: Logger = pino({ level: 'silent' });
