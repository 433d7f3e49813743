// `loopbox report RUN`: gather the run's data and write the HTML file (default <run dir>/report.html).
import { rename, writeFile } from 'node:fs/promises';
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
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, renderReport(data), { mode: 0o644 });
  await rename(tmp, file);
  return file;
}
