// What the loop writes for people and for the agent: commit messages with their trailers, and
// the feedback the next iteration reads in /loopbox/feedback.md.
import type { ReviewResult } from '../review/review.js';
import { type AccountingRecord, evidenceTrailers } from '../verify/accounting.js';
import type { VerifyResult } from '../verify/verify.js';
import type { IterationRecord } from './state.js';

/** The verdict on an iteration and what it rests on (the commit's trailers). */
export interface Accounting {
  verified: boolean;
  /** What the verdict rests on: the trailer `Loopbox-Verify: <evidence>`. */
  evidence: 'exit-code-only' | 'test-report';
  /** Test accounting's verdict, counts and reasons (iterations.jsonl); null when nothing ran. */
  record: AccountingRecord | null;
}

export interface CommitMessageInput {
  task: string;
  runId: string;
  iteration: number;
  verify: VerifyResult | null;
  accounting: Accounting;
  command: string[];
  /** The reviewer's answer on a verified iteration (review on). */
  review?: Pick<ReviewResult, 'approved' | 'model'> | undefined;
  /** The model that did the iteration's work (model.name, or model.escalate.model when escalated). */
  model?: { name: string; escalated: boolean } | undefined;
}

export function commitMessage(input: CommitMessageInput): string {
  const { verify, accounting } = input;
  const verified = accounting.verified;
  const status = verified ? (input.review && !input.review.approved ? 'verified, review rejected' : 'verified') : verify ? `wip (verify ${verify.timedOut ? 'timed out' : verify.passed ? 'not accepted' : `exit ${verify.exitCode}`})` : 'wip (not verified)';
  const lines = [
    `loopbox(${input.task}): iteration ${input.iteration} ${status}`,
    '',
    `Loopbox-Run: ${input.runId}`,
    `Loopbox-Iteration: ${input.iteration}`,
    `Loopbox-Verified: ${verified ? 'yes' : 'no'}`,
  ];
  if (verify) lines.push(...(accounting.record ? evidenceTrailers(accounting.record) : [`Loopbox-Verify: ${accounting.evidence}`]));
  lines.push(`Loopbox-Verify-Command: ${JSON.stringify(input.command)}`);
  // From the host's config (one line: schema.ts); "escalated" when model.escalate did the work.
  if (input.model) lines.push(`Loopbox-Model: ${input.model.name}${input.model.escalated ? ' (escalated)' : ''}`);
  // The model name comes from the host's config (no control characters: schema.ts).
  if (input.review) lines.push(`Loopbox-Review: ${input.review.approved ? `approved (${input.review.model})` : 'rejected'}`);
  return lines.join('\n');
}

/** What the next iteration reads in /loopbox/feedback.md. */
export function feedbackText(record: IterationRecord, command: string[], agentTimeoutMs: number): string {
  const lines = [`# Feedback from iteration ${record.iteration}`, ''];
  if (record.agent.timedOut) lines.push(`- The agent was stopped after its time limit (${Math.round(agentTimeoutMs / 1000)} s).`);
  if (record.agent.stoppedFor) lines.push(`- The agent was stopped: ${record.agent.stoppedFor}.`);
  if (record.agent.outputDropped) lines.push(`- Your output was longer than the cap: ${record.agent.outputDropped} bytes in the middle were dropped.`);
  if (record.protectedViolations.length) {
    lines.push(`- These paths are protected; your changes to them were reverted: ${record.protectedViolations.join(', ')}`);
  }
  if (record.skipped.length) {
    lines.push(`- These paths cannot be committed and were put back or removed: ${record.skipped.map((k) => `${k.path} (${k.reason})`).join(', ')}`);
  }
  if (record.untrusted) lines.push(`- The worktree was made again from the last commit: ${record.untrusted}`);
  if (!record.filesChanged.length) lines.push('- You changed no files in this iteration.');
  if (record.verify?.passed && record.verify.accounting && !record.verify.accounting.verified) {
    lines.push(`- Verification \`${command.join(' ')}\` exited 0 but is not accepted:`, ...record.verify.accounting.reasons.map((r) => `  - ${r}`));
  } else if (record.verify) {
    lines.push(
      record.verify.passed
        ? `- Verification \`${command.join(' ')}\` passed.`
        : `- Verification \`${command.join(' ')}\` failed (${record.verify.timedOut ? 'timed out' : `exit code ${record.verify.exitCode}`}). Its last output lines:`,
    );
  }
  if (record.verify && !record.verified) lines.push('', '```', record.verify.outputTail.trimEnd(), '```');
  const review = record.review;
  if (review && review.verdict !== 'approve') {
    lines.push(`- The reviewer did not accept the change${review.gaming ? ': it looks like the tests were gamed, not the task done' : ''}. The loop goes on until it does. Its reasons:`);
    for (const r of review.reasons) lines.push(`  - ${r.replace(/\s+/g, ' ')}`);
  }
  return `${lines.join('\n')}\n`;
}
