// Errors carry their context (what failed, where, the tail of its log) and a hint that says
// what to do. The CLI prints `shortMessage` + `hint`; `message` holds everything.

export interface ErrorContext {
  hint?: string;
  cause?: unknown;
}

export class LoopboxError extends Error {
  readonly hint: string | undefined;
  /** Exit code the CLI uses for this error. */
  readonly exitCode: number = 1;

  constructor(message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = this.constructor.name;
    this.hint = context.hint;
  }

  get shortMessage(): string {
    return this.message.split('\n')[0] ?? this.message;
  }
}

/** Bad configuration or bad command-line input: exit code 2, nothing was started. */
export class ConfigError extends LoopboxError {
  override readonly exitCode = 2;
  readonly issues: readonly string[];
  constructor(message: string, issues: readonly string[] = [], context: ErrorContext = {}) {
    super(issues.length ? `${message}\n${issues.map((i) => `  - ${i}`).join('\n')}` : message, context);
    this.issues = issues;
  }
}

/** Another loop already drives this task: exit code 2, nothing was started. */
export class TaskBusyError extends LoopboxError {
  override readonly exitCode = 2;
}

export class DockerUnavailableError extends LoopboxError {
  constructor(cause: unknown) {
    super(`Cannot reach the Docker engine: ${describe(cause)}`, {
      cause,
      hint: 'Start Docker (or run scripts/ensure-docker.sh as root on Debian) and check that `docker info` works for this user.',
    });
  }
}

export interface ContainerFailure {
  image: string;
  containerId: string;
  role?: string;
  exitCode?: number | undefined;
  timedOut?: boolean;
  logTail?: string;
}

/** A container that failed to start, exited badly or timed out. */
export class ContainerError extends LoopboxError {
  readonly failure: ContainerFailure;
  constructor(what: string, failure: ContainerFailure, context: ErrorContext = {}) {
    const parts = [
      `${what}`,
      `  image: ${failure.image}`,
      `  container: ${failure.containerId.slice(0, 12)}${failure.role ? ` (${failure.role})` : ''}`,
    ];
    if (failure.exitCode !== undefined) parts.push(`  exit code: ${failure.exitCode}`);
    if (failure.timedOut) parts.push('  timed out: yes');
    if (failure.logTail) parts.push('  last log lines:', indent(failure.logTail));
    super(parts.join('\n'), context);
    this.failure = failure;
  }
}

export class ImageBuildError extends LoopboxError {
  readonly image: string;
  readonly logTail: string;
  constructor(image: string, reason: string, logTail: string, context: ErrorContext = {}) {
    super(`Building image ${image} failed: ${reason}\n  last build lines:\n${indent(logTail)}`, context);
    this.image = image;
    this.logTail = logTail;
  }
}

export function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

export function indent(text: string, prefix = '    '): string {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => prefix + l)
    .join('\n');
}

/** Keeps the last `max` lines written to it, for error messages (Playwright's RecentLogsCollector). */
export class RecentLines {
  private readonly lines: string[] = [];
  private partial = '';
  constructor(private readonly max = 30) {}

  push(chunk: string): void {
    const text = this.partial + chunk;
    const parts = text.split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) {
      this.lines.push(line);
      if (this.lines.length > this.max) this.lines.shift();
    }
  }

  toString(): string {
    const all = this.partial ? [...this.lines, this.partial] : this.lines;
    return all.slice(-this.max).join('\n');
  }
}
