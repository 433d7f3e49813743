// How the CLI shows a loop on the terminal: one line per event on stderr, and the summary table.
import { formatTable, type LoopEvent, type LoopSummary, printable } from '../index.js';
import { err } from './context.js';

export function printLoopEvent(e: LoopEvent): void {
  const tty = process.stderr.isTTY;
  switch (e.type) {
    case 'loop-start':
      err(`loopbox: run ${e.runId} task ${e.task} on branch ${e.branch}${e.resumedAt ? ` (resuming after iteration ${e.resumedAt})` : ''}`);
      err(`         worktree ${e.worktree}`);
      break;
    case 'baseline':
      err(`[${e.task}] base commit: ${e.evidence}${e.notice ? `\nloopbox: warning: ${e.notice}` : ''}`);
      break;
    case 'iteration-start':
      if (tty) process.stderr.write(`[${e.task}] iteration ${e.iteration}: agent running…\r`);
      break;
    case 'iteration-end': {
      const r = e.record;
      const agent = r.agent.timedOut ? 'agent timed out' : `agent exit ${r.agent.exitCode}`;
      const verify = !r.verify
        ? 'not verified'
        : r.verified
          ? 'verify PASS'
          : r.verify.passed
            ? `verify exit 0, NOT ACCEPTED (${r.verify.accounting?.reasons[0] ?? 'no evidence'})`
            : `verify FAIL (${r.verify.timedOut ? 'timeout' : `exit ${r.verify.exitCode}`})`;
      const blocked = r.audit.blockedPackets + r.audit.dnsBlocked;
      err(
        `${tty ? '\x1b[2K' : ''}[${e.task}] iteration ${r.iteration}: ${agent} in ${(r.agent.durationMs / 1000).toFixed(1)} s, ` +
          `${r.filesChanged.length} file(s) changed${r.protectedViolations.length ? `, ${r.protectedViolations.length} protected reverted` : ''}, ` +
          `${verify}${r.commit ? `, commit ${r.commit.slice(0, 8)}` : ''}, ${r.tokens} tokens${r.model?.escalated ? ` (escalated: ${r.model.name ?? '?'})` : ''}, ${blocked} blocked`,
      );
      if (r.review) {
        // The reasons come from outside: no control characters reach the terminal.
        const why = r.review.reasons[0] ? `: ${printable(r.review.reasons[0].replace(/\s+/g, ' ')).slice(0, 160)}` : '';
        err(`[${e.task}] iteration ${r.iteration}: review ${r.review.verdict === 'approve' ? 'APPROVED' : 'REJECTED'} by ${r.review.model}${r.review.gaming ? ' (gaming)' : ''}${why}`);
      }
      break;
    }
    case 'loop-end': {
      err(`[${e.summary.task}] ${e.summary.endState}: ${e.summary.reason}`);
      const rv = e.summary.review;
      if (rv) err(`[${e.summary.task}] reviewer: ${rv.requests} request(s), ${rv.inputTokens} in / ${rv.outputTokens} out tokens${rv.cost === null ? '' : `, cost ${rv.cost.toFixed(4)}`}`);
      break;
    }
    case 'model-down':
      err(`[${e.task}] iteration ${e.iteration}: the model server died; pausing (not counted against the agent)`);
      break;
    case 'notice':
      // Notices carry text from remotes (a PR URL GitHub answered, gh's stderr): one line, no escapes.
      err(`[${e.task}] ${printable(e.message)}`);
      break;
  }
}

export function summaryTable(summaries: LoopSummary[]): string {
  return formatTable(
    ['TASK', 'END STATE', 'ITERATIONS', 'WALL', 'TOKENS', 'BLOCKED', 'VERIFIED COMMIT', 'EVIDENCE', 'RUN'],
    summaries.map((s) => [
      s.task,
      s.endState === 'error' && s.iterations === 0 ? `error: ${s.reason}`.slice(0, 60) : s.endState,
      String(s.iterations),
      `${(s.wallMs / 1000).toFixed(1)} s`,
      String(s.tokens),
      String(s.blocked),
      s.verifiedCommit ? s.verifiedCommit.slice(0, 10) : '-',
      s.evidence,
      s.runId,
    ]),
  );
}
