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
