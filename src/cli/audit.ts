// `loopbox audit key` and `loopbox audit verify`: the tamper-evident side of the audit log.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { type ChainVerification, ConfigError, swarmVerifierKey, formatVerification, listRuns, loadAuditKey, parseVerifierKey, runDir, verifyAuditChain } from '../index.js';
import { existsSync } from 'node:fs';
import { out } from './context.js';
import type { ProgramResult } from './options.js';

export function registerAuditChain(audit: Command, result: ProgramResult): void {
  audit
    .command('key')
    .description('print the public key that signs audit checkpoints (store it somewhere the host cannot rewrite)')
    .action(async () => {
      out((await loadAuditKey()).vkey);
    });

  audit
    .command('verify')
    .description('recompute the audit chain: hashes, links, seq, checkpoint signatures; exit 1 on a break')
    .option('--run <id>', 'only this run (default: every run in the state dir)')
    .option('--key <file>', 'verifier key (the line `loopbox audit key` printed, or a PEM public key); default: the state dir key')
    .option('--json', 'print one JSON result per run')
    .action(async (_opts: unknown, cmd: Command) => {
      // `audit` itself has --run and --json: commander hands them to the parent, so read both.
      const opts = cmd.optsWithGlobals<{ run?: string; key?: string; json?: boolean }>();
      const key = opts.key ? parseVerifierKey(await readFile(opts.key, 'utf8').catch((e: unknown) => {
        throw new ConfigError(`Cannot read the key file ${opts.key}: ${(e as Error).message}`);
      })) : undefined;
      if (opts.run && !existsSync(runDir(opts.run))) {
        throw new ConfigError(`No run ${opts.run} under the state dir.`, [], { hint: 'Check the run id and LOOPBOX_STATE_DIR.' });
      }
      const runIds = opts.run ? [opts.run] : (await listRuns()).map((r) => r.runId);
      const results: ChainVerification[] = [];
      for (const id of runIds) {
        // A swarm run was signed with its own key; the host kept the verifier key in swarm.json.
        const own = key ?? (await swarmVerifierKey(id));
        const v = await verifyAuditChain(runDir(id), own ? { key: own } : {});
        results.push(v);
        out(opts.json ? JSON.stringify(v) : formatVerification(v));
      }
      if (results.some((r) => !r.ok)) result.exitCode = 1;
    });
}
