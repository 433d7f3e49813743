// `loopbox report RUN`: gather the run's data and write the HTML file (default <run dir>/report.html).
import { writeFileAtomic } from '../common/files.js';
import path from 'node:path';
import { runDir } from '../common/paths.js';
import { type ReportOptions, gatherReport } from './data.js';
import { renderReport } from './html.js';

export const REPORT_FILE = 'report.html';

export interface WriteReportOptions extends ReportOptions {
  /** Where to write it; default `<run dir>/report.html`. */
  out?: string | undefined;
}

export async function writeReport(runId: string, options: WriteReportOptions): Promise<string> {
  const data = await gatherReport(runId, options);
  const file = path.resolve(options.out ?? path.join(runDir(runId, options.env ?? process.env), REPORT_FILE));
  await writeFileAtomic(file, renderReport(data), 0o644);
  return file;
}

/** One run's report.html, or why it could not be written (the first line of the error). */
export interface WrittenReport {
  runId: string;
  file?: string;
  error?: string;
}

/**
 * What `loopbox run` and `loopbox demo` do after their loops end: each run's report.html in its
 * run directory. One run's failure (no state.json, a disk error) does not stop the others; it is
 * returned in place of the file, so a caller can say why that report is missing.
 */
export async function writeReports(runIds: string[], options: ReportOptions): Promise<WrittenReport[]> {
  const res: WrittenReport[] = [];
  for (const runId of runIds) {
    try {
      res.push({ runId, file: await writeReport(runId, options) });
    } catch (error) {
      res.push({ runId, error: error instanceof Error ? error.message.split('\n')[0] : String(error) });
    }
  }
  return res;
}
