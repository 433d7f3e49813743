// `loopbox audit`: the audit log as a table, JSON lines or OCSF events; streamed, and with
// --follow, live.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { type Command, Option } from 'commander';
import { AUDIT_TABLE_HEADER, auditRow, formatAuditTable, formatFollowRow } from '../audit/log.js';
import { OCSF_VERSION, type OcsfContext, toOcsf } from '../audit/ocsf.js';
import type { AuditRecord } from '../audit/record.js';
import { streamAudit } from '../audit/stream.js';
import { ConfigError } from '../common/errors.js';
import { packageVersion } from '../common/version.js';
import { parseDuration } from '../config/units.js';
import { imageRef } from '../images/catalog.js';
import { type CliContext, err } from './context.js';
import type { ProgramResult } from './program.js';

export const AUDIT_FORMATS = ['table', 'json', 'ocsf'] as const;
export type AuditFormat = (typeof AUDIT_FORMATS)[number];

interface AuditOptions {
  run?: string;
  task?: string;
  since?: string;
  json?: boolean;
  format?: AuditFormat;
  follow?: boolean;
}

/** Registers `loopbox audit`; returns it so that subcommands (`audit verify`, `audit key`) can hang off it. */
export function registerAudit(program: Command, ctx: CliContext, result: ProgramResult): Command {
  return program
    .command('audit')
    .description('show blocked egress attempts from the audit logs (table, JSON lines or OCSF), or follow them live')
    .option('--run <id>', 'only this run')
    .option('--task <name>', 'only this task')
    .option('--since <time>', 'only records at or after this time (ISO 8601, or a duration ago like 2h)')
    .addOption(new Option('--format <format>', `output format; ocsf = OCSF ${OCSF_VERSION} events as JSON lines`).choices([...AUDIT_FORMATS]))
    .option('--json', 'print JSON lines, exactly as stored (= --format json)')
    .option('-f, --follow', 'keep printing records as they are written (Ctrl+C ends it; with --run, so does the run\'s end)')
    .addHelpText('after', '\nExamples:\n  loopbox audit --since 2h --json | jq .query\n  loopbox audit --run RUN --format ocsf > run.ocsf.jsonl\n  loopbox audit --follow --task fix-login\n')
    .action(async (opts: AuditOptions) => {
      if (opts.run && opts.task) throw new ConfigError('--run and --task: give one of them.', [], { hint: 'A run has one task; --task follows every run of that task.' });
      if (opts.json && opts.format && opts.format !== 'json') throw new ConfigError(`--json and --format ${opts.format} contradict each other.`);
      const format: AuditFormat = opts.format ?? (opts.json ? 'json' : 'table');
      let warnings = 0;
      const lines = streamAudit({
        runId: opts.run,
        task: opts.task,
        since: opts.since ? parseSince(opts.since) : undefined,
        follow: opts.follow ?? false,
        pollMs: Number(process.env.LOOPBOX_AUDIT_POLL_MS) || undefined,
        signal: ctx.signal,
        onWarning: (m) => {
          warnings += 1;
          err(`loopbox audit: ${m}`);
        },
      });
      const write = writer(process.stdout);
      if (format === 'table' && !opts.follow) {
        // A table is measured over all its rows: for humans, not for exports (use json or ocsf).
        const records: AuditRecord[] = [];
        for await (const l of lines) records.push(l.record);
        await write(records.length ? formatAuditTable(records) : 'no blocked attempts recorded');
      } else {
        const contexts = new Map<string, OcsfContext>();
        if (format === 'table') await write(formatFollowRow(AUDIT_TABLE_HEADER));
        for await (const l of lines) {
          let text: string;
          if (format === 'json') text = l.line;
          else if (format === 'table') text = formatFollowRow(auditRow(l.record));
          else text = JSON.stringify(toOcsf(l.record, await contextFor(contexts, l.file)));
          if (!(await write(text))) break; // the reader went away (EPIPE): stop quietly
        }
      }
      if (warnings) {
        err(`loopbox audit: ${warnings} problem(s) reading the audit log (above); the records that could be read were printed`);
        result.exitCode = 1;
      }
    });
}

/** The OCSF context of a record's run: its agent image, from the run's saved config. */
async function contextFor(cache: Map<string, OcsfContext>, file: string): Promise<OcsfContext> {
  const dir = path.dirname(file);
  let hit = cache.get(dir);
  if (!hit) {
    let agentImage: string | undefined;
    try {
      const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as { sandbox?: { image?: string } };
      agentImage = config.sandbox?.image ?? imageRef('agent');
    } catch {
      agentImage = undefined; // a `sandbox run` keeps no config: its image is not known here
    }
    hit = { productVersion: packageVersion(), agentImage };
    cache.set(dir, hit);
  }
  return hit;
}

/** Writes a line, waiting when the reader is slow; resolves false once the reader has gone. */
function writer(stream: Writable): (text: string) => Promise<boolean> {
  let gone = false;
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') gone = true;
    else throw e;
  });
  return async (text) => {
    if (gone) return false;
    if (!stream.write(text.endsWith('\n') ? text : `${text}\n`)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          stream.off('drain', done);
          stream.off('close', done);
          resolve();
        };
        stream.on('drain', done);
        stream.on('close', done);
      });
    }
    return !gone;
  };
}

export function parseSince(value: string): Date {
  const ms = parseDuration(value);
  if (ms !== undefined) return new Date(Date.now() - ms);
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) throw new ConfigError(`--since ${JSON.stringify(value)}: expected an ISO time or a duration like 2h.`);
  return date;
}
