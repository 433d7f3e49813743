import { DockerClient } from '../index.js';

/** What every command gets: a Docker client made on first use, and the stop signal. */
export class CliContext {
  private client: DockerClient | undefined;
  constructor(readonly signal: AbortSignal) {}
  get docker(): DockerClient {
    this.client ??= new DockerClient();
    return this.client;
  }
}

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function err(text: string): void {
  process.stderr.write(text.endsWith('\n') ? text : `${text}\n`);
}
