// Errors of the Docker facade: a failed API call becomes a DockerApiError that names the
// operation, the HTTP status and the container or image, with a hint for that status. An
// engine that does not answer at all is a DockerUnavailableError (common/errors.ts).
import { DockerUnavailableError, LoopboxError, describe } from '../common/errors.js';

/** What an API call was about; each field only where it applies. */
export interface DockerTarget {
  containerId?: string | undefined;
  image?: string | undefined;
  network?: string | undefined;
}

export class DockerApiError extends LoopboxError {
  readonly operation: string;
  /** The engine's HTTP status, when it answered. */
  readonly statusCode: number | undefined;
  readonly containerId: string | undefined;
  readonly image: string | undefined;
  readonly network: string | undefined;

  constructor(operation: string, cause: unknown, target: DockerTarget = {}) {
    const status = statusCode(cause);
    const reason = describe(cause).replace(/^\(HTTP code \d+\)\s*/, '');
    super(`Docker failed ${operation}${status === undefined ? '' : ` (HTTP ${status})`}: ${reason}`, { cause, hint: hintFor(status, target) });
    this.operation = operation;
    this.statusCode = status;
    this.containerId = target.containerId;
    this.image = target.image;
    this.network = target.network;
  }
}

function hintFor(status: number | undefined, target: DockerTarget): string {
  if (status === 404 && target.image) return `The image ${target.image} is not there: run \`loopbox images build\` (or pull it).`;
  if (status === 404) return 'It is gone: removed by `loopbox gc`, `loopbox stop --force` or by hand. Run the command again.';
  if (status === 409) return 'A container or network of that name is in the way, or the resource is busy: `loopbox gc` removes what dead runs left.';
  if (status !== undefined && status >= 500) return 'The Docker engine failed: check `docker info` and its log (journalctl -u docker); LOOPBOX_DEBUG=1 prints the stack.';
  return 'Check `docker info`; LOOPBOX_DEBUG=1 prints the stack.';
}

/** The HTTP status of a dockerode error (or of a DockerApiError), if any. */
export function statusCode(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null || !('statusCode' in error)) return undefined;
  const code = Number(error.statusCode);
  return Number.isFinite(code) ? code : undefined;
}

export function isGone(error: unknown): boolean {
  return statusCode(error) === 404;
}

export function isNotRunning(error: unknown): boolean {
  return statusCode(error) === 409 || statusCode(error) === 304;
}

export function isRemovalInProgress(error: unknown): boolean {
  return statusCode(error) === 409 && /already in progress/i.test(describe(error));
}

/** An engine that is not there (socket refused, missing, not allowed) is not an API failure. */
export function wrapApiError(error: unknown, operation: string, target: DockerTarget = {}): Error {
  const code = (error as { code?: string } | null)?.code;
  if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES') return new DockerUnavailableError(error);
  return new DockerApiError(operation, error, target);
}
