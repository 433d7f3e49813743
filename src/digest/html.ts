// The digest as one self-contained HTML page: inline CSS, no script, no request of any kind
// (the Content-Security-Policy allows only the page's own style). Every string from a run was
// written or influenced by an agent (task names, reasons, DNS names) and is escaped.
import { randomBytes } from 'node:crypto';
import { esc } from '../report/html.js';
import { type Digest, type DigestRun, deliveredText } from './digest.js';

const STATE_CLASS: Record<string, string> = { done: 'good', error: 'bad', unknown: 'bad', stalled: 'warn', capped: 'warn', 'timed-out-budget': 'warn', aborted: 'info', running: 'info' };

const mins = (ms: number): string => (ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${(ms / 1000).toFixed(1)} s`);

function row(r: DigestRun): string {
  const blocked = r.topBlocked.map((b) => `<li><code>${esc(b.name)}</code> ×${b.count}</li>`).join('');
  return `<tr class="${r.attention.length ? 'attention' : ''}" data-testid="run" data-run="${esc(r.runId)}" data-state="${esc(r.endState)}">
<td><strong>${esc(r.task)}</strong><br><span class="muted">${esc(r.runId)}<br>${esc(r.trigger)}</span></td>
<td><span class="badge ${STATE_CLASS[r.endState] ?? 'info'}">${esc(r.endState)}</span><div class="why">${esc(r.reason)}</div>${r.attention.length ? `<ul class="attn" data-testid="attention">${r.attention.map((a) => `<li>${esc(a)}</li>`).join('')}</ul>` : ''}</td>
<td data-sort="${r.iterations}">${r.iterations}</td>
<td data-sort="${r.wallMs}">${esc(mins(r.wallMs))}</td>
<td data-sort="${r.tokens}">${r.tokens}</td>
<td><code>${esc(r.verifiedCommit ? r.verifiedCommit.slice(0, 12) : '-')}</code>${r.evidence ? `<br><span class="muted">${esc(r.evidence)}</span>` : ''}</td>
<td>${esc(deliveredText(r.delivery))}</td>
<td data-sort="${r.blocked}">${r.blocked}${blocked ? `<ul>${blocked}</ul>` : ''}</td>
<td class="${r.audit.status === 'ok' ? 'good' : r.audit.status === 'broken' ? 'bad' : 'muted'}" data-testid="audit">${esc(r.audit.status)}</td>
</tr>`;
}

export function renderDigestHtml(d: Digest): string {
  const nonce = randomBytes(16).toString('base64');
  const bad = d.runs.filter((r) => r.attention.length).length;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'nonce-${nonce}'; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="loopbox ${esc(d.version)}">
<title>loopbox digest since ${esc(d.since)}</title>
<style nonce="${nonce}">${CSS}</style>
</head>
<body>
<h1>loopbox digest <span class="muted">since ${esc(d.since)} on ${esc(d.host)}</span></h1>
<p class="totals" data-testid="totals"><strong>${d.totals.runs}</strong> run(s): <span class="good">${d.totals.done} done</span>, <span class="${bad ? 'bad' : 'muted'}">${d.totals.needsHuman} need a human</span>${Object.entries(d.totals.byState).map(([s, n]) => ` · ${esc(s)} ${n}`).join('')}</p>
${d.runs.length ? `<table>
<thead><tr><th>task</th><th>end state and why</th><th>iterations</th><th>wall time</th><th>tokens</th><th>verified commit</th><th>pushed / PR</th><th>blocked (top)</th><th>audit chain</th></tr></thead>
<tbody>
${d.runs.map(row).join('\n')}
</tbody>
</table>` : '<p data-testid="empty">No loop ran in this window.</p>'}
<footer class="muted">Generated ${esc(d.generatedAt)} by loopbox ${esc(d.version)} from the runs directory. Errors and runs that need a human come first. This file is self-contained: it loads nothing.</footer>
</body>
</html>
`;
}

const CSS = `
:root{--fg:#1b1f24;--muted:#656d76;--line:#d0d7de;--good:#1a7f37;--bad:#cf222e;--warn:#9a6700}
body{font:14px/1.45 system-ui,sans-serif;color:var(--fg);margin:0 auto;max-width:1200px;padding:16px 24px}
h1{font-size:22px}.muted{color:var(--muted);font-weight:normal}.good{color:var(--good)}.bad{color:var(--bad)}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}.badge.good{background:var(--good)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}.badge.info{background:var(--muted)}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid var(--line);padding:6px;text-align:left;vertical-align:top}th{background:#f6f8fa}
tr.attention{background:#fff8f8}ul{margin:4px 0;padding-left:18px}ul.attn{color:var(--bad)}code{font:12px ui-monospace,monospace;word-break:break-all}.why{font-size:12px}
footer{margin-top:24px;font-size:12px}
`;
