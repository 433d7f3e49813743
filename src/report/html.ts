// The run report as one self-contained HTML file: inline CSS, inline SVG charts drawn here, and
// a few lines of inline JS (sortable tables). Nothing is fetched: the Content-Security-Policy
// allows no source at all except this file's own style and script (by nonce), so a report opened
// from a mail or a ticket makes no request. Every string from the run (file names, DNS names,
// commit messages, reasons) was written or influenced by the agent and is escaped.
import { randomBytes } from 'node:crypto';
import type { EgressGroup, ReportData } from './data.js';

export function esc(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const short = (sha: string | null | undefined): string => (sha ? sha.slice(0, 10) : '-');

const END_STATE_CLASS: Record<string, string> = { done: 'good', capped: 'warn', stalled: 'warn', 'timed-out-budget': 'warn', aborted: 'warn', error: 'bad', running: 'info', unknown: 'info' };

export function renderReport(d: ReportData): string {
  const nonce = randomBytes(16).toString('base64');
  const title = `loopbox report: ${d.task} (${d.runId})`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'nonce-${nonce}'; script-src 'nonce-${nonce}'; img-src data:; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="loopbox ${esc(d.version)}">
<title>${esc(title)}</title>
<style nonce="${nonce}">${CSS}</style>
</head>
<body>
<header>
  <h1>${esc(d.task)} <span class="muted">run ${esc(d.runId)}</span></h1>
  <p class="end"><span class="badge ${END_STATE_CLASS[d.endState] ?? 'info'}" data-testid="end-state">${esc(d.endState)}</span>
  <span data-testid="end-reason">${esc(d.endReason)}</span>${d.exitCode !== null ? ` <span class="muted">(exit code ${d.exitCode})</span>` : ''}</p>
</header>
<main>
${cards(d)}
${timeline(d)}
${commitSection(d)}
${egressSection(d)}
${modelSection(d)}
${chainSection(d)}
</main>
<footer class="muted">Generated ${esc(d.generatedAt)} by loopbox ${esc(d.version)} from ${esc(d.repo)}, branch ${esc(d.branch)}, trigger ${esc(d.trigger)}.
This file is self-contained: it loads nothing.</footer>
<script nonce="${nonce}">${JS}</script>
</body>
</html>
`;
}

function cards(d: ReportData): string {
  const card = (label: string, value: string, id: string): string => `<div class="card"><div class="label">${esc(label)}</div><div class="value" data-testid="${id}">${value}</div></div>`;
  return `<section class="cards" aria-label="summary">
${card('iterations', String(d.iterations.length), 'iterations')}
${card('wall time', esc(seconds(d.wallMs)), 'wall')}
${card('tokens', String(d.tokens), 'tokens')}
${card('blocked attempts', String(d.blocked), 'blocked')}
${card('audit records', String(d.egress.records), 'records')}
${card('verified commit', d.verified ? `<code>${esc(short(d.verified.commit))}</code>` : 'none', 'verified')}
</section>`;
}

function timeline(d: ReportData): string {
  if (!d.iterations.length) return `<section id="timeline"><h2>Iterations</h2><p>No iteration ran.</p></section>`;
  const t0 = Date.parse(d.iterations[0]!.startedAt);
  const spans = d.iterations.map((i) => {
    const start = Date.parse(i.startedAt) - t0;
    const agentEnd = start + i.agent.durationMs;
    const end = Math.max(Date.parse(i.endedAt) - t0, agentEnd + (i.verify?.durationMs ?? 0));
    return { i, start, agentEnd, end };
  });
  const total = Math.max(1, ...spans.map((s) => s.end));
  const W = 900;
  const X0 = 60;
  const rowH = 22;
  const x = (ms: number): number => X0 + (ms / total) * (W - X0 - 10);
  const rows = spans
    .map(({ i, start, agentEnd }, n) => {
      const y = 10 + n * rowH;
      const verify = i.verify
        ? `<rect class="${i.verify.passed ? 'pass' : 'fail'}" x="${x(agentEnd).toFixed(1)}" y="${y}" width="${Math.max(2, x(agentEnd + i.verify.durationMs) - x(agentEnd)).toFixed(1)}" height="${rowH - 8}"><title>verify ${i.verify.passed ? 'passed' : 'failed'} in ${esc(seconds(i.verify.durationMs))}</title></rect>`
        : '';
      return `<text x="4" y="${y + 11}">it ${i.iteration}</text><rect class="agent" x="${x(start).toFixed(1)}" y="${y}" width="${Math.max(2, x(agentEnd) - x(start)).toFixed(1)}" height="${rowH - 8}"><title>agent ${esc(seconds(i.agent.durationMs))}, exit ${i.agent.exitCode}${i.agent.timedOut ? ' (timed out)' : ''}</title></rect>${verify}`;
    })
    .join('');
  const h = 30 + d.iterations.length * rowH;
  const svg = `<svg class="chart" viewBox="0 0 ${W} ${h}" role="img" aria-label="iteration timeline">${rows}<text x="${X0}" y="${h - 4}" class="axis">0 s</text><text x="${W - 10}" y="${h - 4}" class="axis" text-anchor="end">${esc(seconds(total))}</text></svg>`;
  const body = d.iterations
    .map((i) => {
      const verify = i.verify ? (i.verify.passed ? '<span class="good">pass</span>' : `<span class="bad">fail${i.verify.timedOut ? ' (timeout)' : ` (exit ${i.verify.exitCode})`}</span>`) : `<span class="muted">not verified${i.untrusted ? `: ${esc(i.untrusted)}` : ''}</span>`;
      const files = i.filesChanged.length
        ? `<details><summary>${i.filesChanged.length}</summary><ul>${i.filesChanged.slice(0, 200).map((f) => `<li><code>${esc(f)}</code></li>`).join('')}${i.filesChanged.length > 200 ? `<li>… ${i.filesChanged.length - 200} more</li>` : ''}</ul></details>`
        : '0';
      const blocked = i.audit.blockedPackets + i.audit.dnsBlocked;
      return `<tr data-testid="iteration-row"><td data-sort="${i.iteration}">${i.iteration}</td><td data-sort="${i.agent.durationMs}">${esc(seconds(i.agent.durationMs))}${i.agent.timedOut ? ' <span class="bad">timed out</span>' : ''}${i.agent.stoppedFor ? ` <span class="bad">stopped: ${esc(i.agent.stoppedFor)}</span>` : ''} <span class="muted">exit ${i.agent.exitCode}</span></td><td>${verify}</td><td data-sort="${i.filesChanged.length}">${files}${i.protectedViolations.length ? ` <span class="warn">${i.protectedViolations.length} protected reverted</span>` : ''}</td><td data-sort="${i.tokens}">${i.tokens}${i.model?.escalated ? ` <span class="warn" data-testid="escalated-model" title="model.escalate did this iteration's work">${esc(i.model.name ?? '?')}</span>` : ''}</td><td data-sort="${blocked}">${blocked}</td><td><code>${esc(short(i.commit))}</code>${i.verified ? ' <span class="good">verified</span>' : ''}${i.modelDown ? ' <span class="warn">model down</span>' : ''}</td></tr>`;
    })
    .join('\n');
  return `<section id="timeline"><h2>Iterations</h2>
<p class="legend"><span class="sw agent"></span> agent <span class="sw pass"></span> verify passed <span class="sw fail"></span> verify failed</p>
${svg}
<table class="sortable" data-testid="iterations-table"><thead><tr><th>#</th><th>agent time</th><th>verify</th><th>files changed</th><th>tokens</th><th>blocked</th><th>commit</th></tr></thead><tbody>
${body}
</tbody></table></section>`;
}

function commitSection(d: ReportData): string {
  if (!d.verified) {
    return `<section id="commit"><h2>Verified commit</h2><p>None: no iteration passed verification.${d.lastCommit ? ` The last (unverified) commit on <code>${esc(d.branch)}</code> is <code>${esc(short(d.lastCommit))}</code>.` : ''}</p></section>`;
  }
  const v = d.verified;
  const added = v.files.reduce((n, f) => n + (f.added ?? 0), 0);
  const deleted = v.files.reduce((n, f) => n + (f.deleted ?? 0), 0);
  const rows = v.files.map((f) => `<tr><td><code>${esc(f.path)}</code></td><td class="good" data-sort="${f.added ?? -1}">${f.added === null ? 'binary' : `+${f.added}`}</td><td class="bad" data-sort="${f.deleted ?? -1}">${f.deleted === null ? '' : `-${f.deleted}`}</td></tr>`).join('');
  return `<section id="commit"><h2>Verified commit</h2>
<p><code data-testid="verified-commit">${esc(v.commit)}</code> (iteration ${v.iteration}) on <code>${esc(d.branch)}</code>: ${v.files.length} file(s), <span class="good">+${added}</span> <span class="bad">-${deleted}</span> against the run's base.</p>
${v.error ? `<p class="bad">${esc(v.error)}</p>` : ''}
<pre class="message">${esc(v.message)}</pre>
<table class="sortable"><thead><tr><th>file</th><th>added</th><th>deleted</th></tr></thead><tbody>${rows}</tbody></table>
<p class="muted">Review it: <code>git -C ${esc(d.repo)} show ${esc(short(v.commit))}</code></p></section>`;
}

function egressSection(d: ReportData): string {
  const e = d.egress;
  const head = `<p>${e.attempts} blocked attempt(s) in ${e.records} audit record(s): ${e.packets} packet(s), ${e.dns} DNS look-up(s)${e.modelDenied ? `, ${e.modelDenied} model request(s) refused by the gateway` : ''}${e.lost ? `, <span class="bad">${e.lost} record(s) lost</span>` : ''}${e.other ? `, ${e.other} other record(s)` : ''}. The firewall and DNS counters counted <span data-testid="blocked-counters">${d.blocked}</span>.</p>`;
  const warn = e.warnings.length ? `<ul class="bad">${e.warnings.map((w) => `<li>${esc(w)}</li>`).join('')}</ul>` : '';
  if (!e.groups.length) return `<section id="egress"><h2>Blocked egress</h2>${head}${warn}</section>`;
  const rows = e.groups
    .slice(0, 200)
    .map((g: EgressGroup) => `<tr data-testid="egress-row"><td>${esc(g.kind)}</td><td><code>${esc(g.key)}</code></td><td>${g.detail.map(esc).join(', ')}</td><td data-sort="${g.count}">${g.count}</td><td>${esc(g.iterations.sort((a, b) => a - b).join(', '))}</td><td>${esc(g.first.slice(11, 19))}–${esc(g.last.slice(11, 19))}</td></tr>`)
    .join('\n');
  return `<section id="egress"><h2>Blocked egress</h2>${head}${warn}
${overTime(d)}
<table class="sortable" data-testid="egress-table"><thead><tr><th>kind</th><th>destination or name</th><th>type / rule</th><th>count</th><th>iterations</th><th>first–last (UTC)</th></tr></thead><tbody>
${rows}
</tbody></table>${e.groups.length > 200 ? `<p class="muted">… ${e.groups.length - 200} more groups: <code>loopbox audit --run ${esc(d.runId)}</code></p>` : ''}</section>`;
}

/** Blocked attempts over time, packets and DNS stacked, in at most 60 bars. */
function overTime(d: ReportData): string {
  const per = d.egress.perSecond;
  if (!per.length) return '';
  const span = per.at(-1)![0] + 1;
  const bins = Math.min(60, span);
  const width = span / bins;
  const b: Array<[number, number]> = Array.from({ length: bins }, () => [0, 0]);
  for (const [s, p, q] of per) {
    const i = Math.min(bins - 1, Math.floor(s / width));
    b[i]![0] += p;
    b[i]![1] += q;
  }
  const max = Math.max(1, ...b.map(([p, q]) => p + q));
  const W = 900;
  const H = 160;
  const X0 = 40;
  const bw = (W - X0 - 10) / bins;
  const y = (n: number): number => ((H - 30) * n) / max;
  const bars = b
    .map(([p, q], i) => {
      const x = X0 + i * bw;
      const from = Math.round(i * width);
      const tip = `<title>${from}–${Math.round((i + 1) * width)} s: ${p} packet(s), ${q} DNS</title>`;
      return `<g><rect class="pkt" x="${x.toFixed(1)}" y="${(H - 20 - y(p)).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${y(p).toFixed(1)}">${tip}</rect><rect class="dns" x="${x.toFixed(1)}" y="${(H - 20 - y(p) - y(q)).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${y(q).toFixed(1)}">${tip}</rect></g>`;
    })
    .join('');
  return `<p class="legend"><span class="sw pkt"></span> packets <span class="sw dns"></span> DNS look-ups, per ${width.toFixed(width < 10 ? 1 : 0)} s from ${esc(d.egress.firstTime ?? '')}</p>
<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="blocked attempts over time" data-testid="egress-chart"><line class="axisline" x1="${X0}" y1="${H - 20}" x2="${W - 10}" y2="${H - 20}"/>${bars}<text x="${X0 - 4}" y="14" class="axis" text-anchor="end">${max}</text><text x="${X0 - 4}" y="${H - 20}" class="axis" text-anchor="end">0</text><text x="${X0}" y="${H - 4}" class="axis">0 s</text><text x="${W - 10}" y="${H - 4}" class="axis" text-anchor="end">${span} s</text></svg>`;
}

function modelSection(d: ReportData): string {
  const m = d.model;
  const its = d.iterations;
  const max = Math.max(1, ...its.map((i) => i.tokens));
  const W = 900;
  const H = 120;
  const bw = its.length ? (W - 50) / its.length : 0;
  const bars = its
    .map((i, n) => {
      const h = ((H - 30) * i.tokens) / max;
      return `<rect class="tok" x="${(40 + n * bw).toFixed(1)}" y="${(H - 20 - h).toFixed(1)}" width="${Math.max(1, bw - 2).toFixed(1)}" height="${h.toFixed(1)}"><title>iteration ${i.iteration}: ${i.tokens} tokens</title></rect>`;
    })
    .join('');
  const requests = Object.entries(m.requests);
  return `<section id="model"><h2>Model usage</h2>
<p>Model: <code>${esc(m.name)}</code>${m.ctxSize ? `, context ${m.ctxSize}` : ''}. <span data-testid="model-tokens">${m.tokens}</span> tokens (prompt and generated, from the server's counters); ${m.allowedPackets} packet(s), ${m.allowedBytes} byte(s) sent to the model; ${m.dnsAnswered} look-up(s) of its name answered.${requests.length ? ` Gateway audit records: ${requests.map(([k, v]) => `${esc(k)} ${v}`).join(', ')}.` : ''}</p>
${its.some((i) => i.model?.escalated) ? `<p data-testid="model-escalated">Escalated (model.escalate): iteration(s) ${its.filter((i) => i.model?.escalated).map((i) => i.iteration).join(', ')} went to <code>${esc(its.find((i) => i.model?.escalated)?.model?.name ?? '?')}</code>, ${its.filter((i) => i.model?.escalated).reduce((a, i) => a + i.tokens, 0)} tokens.</p>` : ''}
${m.gateway ? `<p data-testid="model-gateway">Through the model gateway: ${m.gateway.requests} request(s), ${m.gateway.denied} refused${Object.keys(m.gateway.deniedWhy).length ? ` (${Object.entries(m.gateway.deniedWhy).map(([k, v]) => `${esc(k)} ${v}`).join(', ')})` : ''}; ${m.gateway.promptTokens} prompt tokens (${m.gateway.cachedTokens} from the cache), ${m.gateway.completionTokens} generated.</p>` : ''}
${reviewLine(d)}
${its.length ? `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="tokens per iteration">${bars}<text x="36" y="14" class="axis" text-anchor="end">${max}</text><text x="36" y="${H - 20}" class="axis" text-anchor="end">0</text><text x="40" y="${H - 4}" class="axis">it 1</text><text x="${W - 10}" y="${H - 4}" class="axis" text-anchor="end">it ${its.at(-1)!.iteration}</text></svg>` : ''}
</section>`;
}

/** The reviewer's verdicts, tokens and cost, from the iteration records (review: on). */
function reviewLine(d: ReportData): string {
  const reviews = d.iterations.flatMap((i) => (i.review ? [{ iteration: i.iteration, ...i.review }] : []));
  if (!reviews.length) return '';
  const sum = (f: (r: (typeof reviews)[number]) => number): number => reviews.reduce((a, r) => a + f(r), 0);
  const priced = reviews.filter((r) => r.cost !== null);
  const verdicts = reviews.map((r) => `${r.iteration}: ${r.verdict}${r.gaming ? ' (gaming)' : ''}`).join(', ');
  return `<p data-testid="review-summary">Reviewer <code>${esc(reviews[0]!.model)}</code>: ${sum((r) => r.attempts)} request(s), ${sum((r) => r.bytesSent)} byte(s) sent, ${sum((r) => r.inputTokens)} input and ${sum((r) => r.outputTokens)} output tokens${priced.length ? `, cost <span data-testid="review-cost">${sum((r) => r.cost ?? 0).toFixed(6)}</span>` : ''}. Verdicts by iteration: ${esc(verdicts)}.</p>`;
}

function chainSection(d: ReportData): string {
  const cls = d.chain.status === 'ok' ? 'good' : d.chain.status === 'broken' ? 'bad' : 'muted';
  return `<section id="chain"><h2>Audit log integrity</h2><p><span class="badge ${cls === 'muted' ? 'info' : cls}" data-testid="chain-status">${esc(d.chain.status)}</span> ${esc(d.chain.message)}</p></section>`;
}

const CSS = `
:root{--fg:#1b1f24;--muted:#656d76;--bg:#fff;--line:#d0d7de;--good:#1a7f37;--bad:#cf222e;--warn:#9a6700;--info:#0969da;--agent:#54aeff;--pkt:#fb8f44;--dns:#8250df;--tok:#2da44e}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;max-width:960px;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;border-bottom:1px solid var(--line);padding-bottom:4px;margin-top:28px}
.muted{color:var(--muted);font-weight:normal}.good{color:var(--good)}.bad{color:var(--bad)}.warn{color:var(--warn)}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}.badge.good{background:var(--good)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}.badge.info{background:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:8px;margin:12px 0}.card{border:1px solid var(--line);border-radius:6px;padding:8px}.card .label{color:var(--muted);font-size:12px}.card .value{font-size:20px;font-weight:600}
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}th{cursor:pointer;user-select:none;background:#f6f8fa}th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}pre.message{background:#f6f8fa;padding:8px;white-space:pre-wrap;font-size:12px}
details ul{margin:4px 0;padding-left:18px}svg.chart{width:100%;height:auto;border:1px solid var(--line);border-radius:6px;margin:6px 0}
svg text{font:11px system-ui,sans-serif;fill:var(--fg)}svg .axis{fill:var(--muted)}svg .axisline{stroke:var(--line)}
rect.agent,.sw.agent{fill:var(--agent);background:var(--agent)}rect.pass,.sw.pass{fill:var(--good);background:var(--good)}rect.fail,.sw.fail{fill:var(--bad);background:var(--bad)}rect.pkt,.sw.pkt{fill:var(--pkt);background:var(--pkt)}rect.dns,.sw.dns{fill:var(--dns);background:var(--dns)}rect.tok{fill:var(--tok)}
.legend{color:var(--muted);font-size:12px}.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 2px 0 10px}
footer{margin-top:32px;font-size:12px}
@media print{th{background:none}}
`;

// Sort a table by a header click: numbers by data-sort, text otherwise.
const JS = `
for (const table of document.querySelectorAll('table.sortable')) {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach((h) => h.classList.remove('asc', 'desc'));
    th.classList.add(asc ? 'asc' : 'desc');
    const body = table.tBodies[0];
    const key = (row) => { const c = row.cells[col]; const s = c && c.dataset.sort; return s !== undefined ? Number(s) : (c ? c.textContent : ''); };
    const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    for (const r of rows) body.appendChild(r);
  }));
}
`;
