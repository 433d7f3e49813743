#!/usr/bin/env node
// Benchmark: what one loopbox loop iteration costs on top of the Docker work it must do anyway.
//
// One run measures, back to back on the same machine (so the ratios share the same noise):
//   A. bare        `docker run --rm <agent image> true`, N times (median per run).
//   B. bash loop   a real bash script doing, per iteration, an agent `docker run` with the
//                  worktree bind-mounted, a verify `docker run --network none`, and
//                  `git add -A && git commit --allow-empty` in a plain repo copy.
//   L. loopbox     runLoop() in this process: a no-op agent (`true`) in a full sandbox (sentry +
//                  agent), verify `false` in a clean container, N iterations, ends `capped`.
//                  (verify `true` would end the loop `done` after one iteration; with a failing
//                  verify and no change loopbox writes no commit, while B commits every time.)
//   G. gateway    the model gateway's added latency: inside one sentry, as the gateway's own uid
//                  (the one uid allowed to reach the model directly), the same requests go
//                  alternately straight to the model and through the gateway, each on a new
//                  connection; p50/p95 of both and of the difference (target: p50 < 2 ms).
// It prints per-iteration times, the ratios L/A (target <= 2.5x) and L/B (target <= 1.1x), the
// orchestrator's peak RSS during L (sampled every 100 ms), and where L's time goes: every
// Docker API call the loop makes, timed through a wrapped DockerClient; "outside Docker calls"
// is git, the file system and the audit log. Timings are a report, never asserted. Other
// Docker work on the machine makes them noisy: compare ratios within one run.
//
// S. repo size  the same loop on repositories of 1,000 / 20,000 / 100,000 tracked files: an agent
//                that appends one line to one file, loopbox vs the bash loop on the same kind of
//                repository, per-step host times and the slope in ms per 1,000 files. Then the
//                whole run, start to end (loopbox: checkout, base verify, sentry, 3 iterations;
//                bash: `git clone`, 3 iterations), and the per-iteration snapshot after the first
//                against `git status` on the bash loop's clone of the same tree.
//
// P3. audit flood one iteration in a real sandbox makes 10,000 blocked TCP connections to a
//                decoy and 100,000 DNS queries for .invalid names, then 1,000,000 DNS queries at
//                full rate to the sandbox's resolver and 200,000 straight to the decoy's port 53:
//                records, aggregates, loss records, the total accounted for vs the attempts per
//                path, peak RSS (target < 200 MB), audit size, ingest and verify time.
//
// Usage: npm run bench   (BENCH_ITERATIONS=N to change N, default 8; runs the 20,000-file point)
//        npm run bench -- --sizes             the repo-size sweep alone (1,000 / 20,000 / 100,000)
//        npm run bench -- --sizes=1000,5000   the sweep at chosen sizes (BENCH_SIZE_ITERATIONS, default 3)
//        npm run bench -- --audit-flood       P3 alone (BENCH_P3_TCP, BENCH_P3_DNS, BENCH_P3_WIDTH, BENCH_P3_FULL, BENCH_P3_DIRECT)
//        BENCH_ONLY=gateway npm run bench     G alone (BENCH_GATEWAY_REQUESTS, default 300)
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { execa } from 'execa';

const root = path.resolve(import.meta.dirname, '..');
// Before the library reads it: the fixture model is cached under <state>/models between runs.
process.env.LOOPBOX_STATE_DIR = path.join(root, '.loopbox', 'bench-state');

const { DockerClient, buildImages, ensureFixtureModel, findModelServer, modelUp, modelDown, imageRef, parseConfig, runDir, managedFilter, MODEL_NETWORK } =
  await import('../dist/index.js');
const { runLoop } = await import('../dist/loop/loop.js');
const { LoopRunner } = await import('../dist/runner/runner.js');
const { createExampleRepo } = await import('../dist/demo/example-repo.js');
const { Sentry } = await import('../dist/sandbox/sandbox.js');

const N = Number(process.env.BENCH_ITERATIONS ?? 8);
const runId = `bench-${randomBytes(4).toString('hex')}`;
const labels = ['--label', 'loopbox.managed=true', '--label', `loopbox.run-id=${runId}`];
const say = (line) => process.stderr.write(`bench: ${line}\n`);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (x) => `${x.toFixed(0)} ms`;

/** A DockerClient that times every top-level call; nested ones (waitForLog's polls) as `outer>inner`. */
function timedDocker(calls) {
  const docker = new DockerClient();
  // The calling call, per async context: calls made concurrently do not nest in each other.
  const parent = new AsyncLocalStorage();
  const wrap = (name, fn) =>
    async (...args) => {
      const outer = parent.getStore();
      const label = outer ? `${outer}>${name}` : name;
      const t0 = performance.now();
      try {
        return await parent.run(label, () => fn(...args));
      } finally {
        calls.push({ label, nested: outer !== undefined, t0, t1: performance.now(), ms: performance.now() - t0 });
      }
    };
  const methods = ['findImage', 'createContainer', 'start', 'attach', 'wait', 'kill', 'stop', 'remove', 'inspect', 'logs', 'exec', 'waitForLog', 'findNetwork', 'connectNetwork'];
  for (const m of methods) docker[m] = wrap(m, DockerClient.prototype[m].bind(docker));
  // findModelServer (network.ts) and putArchive (verify.ts) go to dockerode directly.
  docker.api.listContainers = wrap('api.listContainers', docker.api.listContainers.bind(docker.api));
  const getContainer = docker.api.getContainer.bind(docker.api);
  docker.api.getContainer = (id) => {
    const c = getContainer(id);
    c.putArchive = wrap('api.putArchive', c.putArchive.bind(c));
    return c;
  };
  return docker;
}

async function setup(docker) {
  await docker.ping();
  await buildImages(docker, { onLine: (l) => say(l) });
  const gguf = await ensureFixtureModel(docker);
  if (await findModelServer(docker)) return false;
  say('no model server running: starting one (stopped again at the end)');
  // The same settings as the Docker tests' setup, so a test run that reuses it is not surprised.
  await modelUp(docker, { gguf, ctxSize: 131072, parallel: 2, gpuLayers: 0, gpus: 'none', startTimeoutMs: 60_000 });
  return true;
}

async function bareDocker(image) {
  const times = [];
  for (let i = 0; i < N; i += 1) {
    const t0 = performance.now();
    await execa('docker', ['run', '--rm', ...labels, image, 'true']);
    times.push(performance.now() - t0);
  }
  return times;
}

const BASH_LOOP = `set -euo pipefail
now() { date +%s%N; }
for i in $(seq 1 "$N"); do
  t0=$(now)
  docker run --rm $LABELS -v "$WT":/workspace "$IMAGE" true
  t1=$(now)
  docker run --rm $LABELS --network none -v "$WT":/workspace "$IMAGE" true
  t2=$(now)
  git -C "$WT" add -A && git -C "$WT" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false commit --allow-empty -qm wip
  t3=$(now)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) $(( (t3 - t2) / 1000000 ))"
done`;

async function bashLoop(image, worktree) {
  const t0 = performance.now();
  const { stdout } = await execa('bash', ['-c', BASH_LOOP], { env: { N: String(N), WT: worktree, IMAGE: image, LABELS: labels.join(' ') } });
  const totalMs = performance.now() - t0;
  const rows = stdout.trim().split('\n').map((l) => l.split(' ').map(Number));
  return { totalMs, iters: rows.map((r) => r[0] + r[1] + r[2]), agent: rows.map((r) => r[0]), verify: rows.map((r) => r[1]), git: rows.map((r) => r[2]) };
}

/** A no-op agent, a failing verify, `iterations` iterations: the loop ends `capped`. */
function noopConfig(iterations, sandbox) {
  return parseConfig({
    agent: { type: 'command', command: ['true'], timeout: '60s' },
    verify: { command: ['false'], timeout: '60s' },
    loop: { maxIterations: iterations, noProgress: iterations + 1, oscillationWindow: 2 },
    sandbox,
  });
}

async function loopbox(docker, repo, calls) {
  const config = noopConfig(N, { memory: '1g', cpus: 1, pids: 256 });
  const records = [];
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 100);
  const t0 = performance.now();
  try {
    const summary = await runLoop(docker, {
      repo,
      taskFile: path.join(repo, 'tasks', 'fix-add.md'),
      config,
      runId,
      signal: abort.signal,
      onEvent: (e) => e.type === 'iteration-end' && records.push(e.record),
    });
    const totalMs = performance.now() - t0;
    if (summary.endState !== 'capped') say(`warning: loop ended ${summary.endState} (${summary.reason}), expected capped`);
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
    return { totalMs, records, peakRss, calls };
  } finally {
    clearInterval(sampler);
  }
}

function report({ bare, bash, lb }) {
  const dur = (r) => Date.parse(r.endedAt) - Date.parse(r.startedAt);
  const lbPer = lb.totalMs / N;
  const lbMedian = median(lb.records.map(dur));
  const bareMedian = median(bare);
  const bashPer = bash.totalMs / N;
  const out = [];
  const row = (name, ...cells) => out.push(`${name.padEnd(46)}${cells.map((c) => String(c).padStart(12)).join('')}`);
  out.push(`loopbox bench: ${N} iterations, ${new Date().toISOString()}, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`, '');
  row('', 'total', 'per iter', 'median');
  row('A  bare docker run --rm <agent> true', ms(bare.reduce((a, b) => a + b, 0)), ms(bareMedian), ms(bareMedian));
  row('B  bash loop (2 docker runs + git commit)', ms(bash.totalMs), ms(bashPer), ms(median(bash.iters)));
  row('     agent docker run', '', '', ms(median(bash.agent)));
  row('     verify docker run', '', '', ms(median(bash.verify)));
  row('     git add + commit', '', '', ms(median(bash.git)));
  row('L  loopbox runLoop (sentry+agent, verify)', ms(lb.totalMs), ms(lbPer), ms(lbMedian));
  row('     agent (runAgent durationMs)', '', '', ms(median(lb.records.map((r) => r.agent.durationMs))));
  row('     verify (runVerify durationMs)', '', '', ms(median(lb.records.map((r) => r.verify?.durationMs ?? 0))));
  row('     rest (git, tokens, state, audit)', '', '', ms(median(lb.records.map((r) => dur(r) - r.agent.durationMs - (r.verify?.durationMs ?? 0)))));
  out.push('');
  const verdict = (x, target) => `${x.toFixed(2)}x  (target <= ${target}x: ${x <= target ? 'MET' : 'NOT MET'})`;
  out.push(`L per iteration / A bare docker run:  ${verdict(lbPer / bareMedian, 2.5)}`);
  out.push(`L per iteration / B bash iteration:   ${verdict(lbPer / bashPer, 1.1)}`);
  out.push(`L overhead over B:                    ${ms(lbPer - bashPer)} per iteration`);
  out.push(`orchestrator peak RSS during L:       ${(lb.peakRss / 2 ** 20).toFixed(1)} MiB`, '');

  // Where L's time goes: Docker API calls per iteration (top-level; `a>b` are nested in a).
  const by = new Map();
  for (const c of lb.calls) {
    const e = by.get(c.label) ?? { n: 0, ms: 0, nested: c.nested };
    e.n += 1;
    e.ms += c.ms;
    by.set(c.label, e);
  }
  const dockerMs = lb.calls.filter((c) => !c.nested).reduce((a, c) => a + c.ms, 0);
  out.push(`loopbox time per iteration by Docker API call (${N} iterations, plus loop start-up):`);
  row('  call', 'calls/iter', 'ms/iter', 'ms/call');
  for (const [label, e] of [...by].sort((a, b) => b[1].ms - a[1].ms)) {
    row(`  ${e.nested ? '  ' : ''}${label}`, (e.n / N).toFixed(1), (e.ms / N).toFixed(1), (e.ms / e.n).toFixed(1));
  }
  row('  all top-level Docker calls', '', (dockerMs / N).toFixed(1), '');
  row('  outside Docker calls (git, fs, audit, ...)', '', ((lb.totalMs - dockerMs) / N).toFixed(1), '');
  // The host idles between wait() returning and its next Docker call while it waits for the
  // attached stdout to end (sandbox.ts and verify.ts race that against a 1 s timer).
  const top = lb.calls.filter((c) => !c.nested).sort((a, b) => a.t0 - b.t0);
  const idle = top.map((c, i) => (c.label === 'wait' && top[i + 1] ? top[i + 1].t0 - c.t1 : 0)).reduce((a, b) => a + b, 0);
  row('    of which idle right after wait() (drain)', '', (idle / N).toFixed(1), (idle / Math.max(1, top.filter((c) => c.label === 'wait').length)).toFixed(1));
  process.stdout.write(`${out.join('\n')}\n`);
}

/** Parallel loops: the same 4 no-op loops at once (bounded by the model's slots) and one after another. */
async function parallelLoops(docker, repo, loops, concurrency) {
  const config = noopConfig(P_ITERATIONS, { memory: '512m', cpus: 0.5, pids: 128 });
  const files = [];
  for (let i = 1; i <= loops; i += 1) files.push(path.join(repo, 'tasks', `p${i}.md`));
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 100);
  const runner = await LoopRunner.create(docker, { repo, config, concurrency, allowDirty: true, signal: abort.signal });
  const t0 = performance.now();
  try {
    const summaries = await runner.runAll(files, 'bench');
    for (const s of summaries) {
      pRuns.push(s.runId);
      if (s.endState !== 'capped') say(`warning: ${s.task} ended ${s.endState} (${s.reason})`);
    }
    return { ms: performance.now() - t0, peakRss: Math.max(peakRss, process.memoryUsage().rss), slots: runner.slots };
  } finally {
    clearInterval(sampler);
  }
}

async function cleanup(docker, made, startedModel) {
  for (const id of [...pRuns, ...sizeRuns]) await rm(runDir(id), { recursive: true, force: true }).catch(() => undefined);
  for (const dir of made) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  await rm(runDir(runId), { recursive: true, force: true }).catch(() => undefined);
  const left = [];
  for (const id of [runId, ...sizeRuns]) left.push(...(await docker.listManaged(managedFilter(id))));
  for (const r of left.filter((x) => x.kind === 'container')) await docker.remove(r.id);
  for (const r of left.filter((x) => x.kind === 'network')) await docker.removeNetwork(r.id);
  if (left.length) say(`removed leftovers: ${left.map((r) => `${r.kind} ${r.name}`).join(', ')}`);
  if (startedModel) {
    await modelDown(docker);
    await docker.removeNetwork(MODEL_NETWORK).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// P3. An audit flood (issue 8.3): one iteration in a real sandbox makes 10,000 blocked TCP
// connection attempts to a decoy the bench made, and 100,000 DNS queries for distinct names
// under .invalid. It reports what the host made of it: records kept, aggregates and what they
// count, the total accounted for against the attempts, the orchestrator's peak RSS (target
// < 200 MB), the size of audit.jsonl, the time to ingest (collect: counters, stream, limit,
// append + fsync), and the time to verify the chain.
const P3_TCP = Number(process.env.BENCH_P3_TCP ?? 10_000);
const P3_DNS = Number(process.env.BENCH_P3_DNS ?? 100_000);
// DNS queries in flight at once.
const P3_WIDTH = Number(process.env.BENCH_P3_WIDTH ?? 32);
// Then (issue 17) DNS queries at full rate, as fast as the kernel accepts them (bursts of 500 per
// setImmediate): to the sandbox's resolver (127.0.0.11:53, the DNS front), and straight to the
// decoy's port 53 (blocked; the name comes from the packet).
const P3_FULL = Number(process.env.BENCH_P3_FULL ?? 1_000_000);
const P3_DIRECT = Number(process.env.BENCH_P3_DIRECT ?? 200_000);

const FLOOD = `
const net = require('net'), dns = require('dns');
const dgram = require('dgram');
const [host, port, nTcp, nDns, tag, width, nFull, nDirect] = process.argv.slice(1);
const query = (id, name) => {
  const parts = [Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of name.split('.')) parts.push(Buffer.from([l.length]), Buffer.from(l));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
};
const fullRate = (n, to, toPort, what) => new Promise((done) => {
  const s = dgram.createSocket('udp4');
  const label = 'x'.repeat(60);
  let sent = 0, failed = 0, i = 0, settled = 0;
  const t0 = Date.now();
  const burst = () => {
    for (let k = 0; k < 500 && i < n; k++, i++) s.send(query(i & 65535, label + '.' + i + '.' + what + '.' + tag + '.invalid'), toPort, to, (e) => { if (e) failed++; else sent++; if (++settled === n) { s.close(); done({ sent, failed, ms: Date.now() - t0 }); } });
    if (i < n) setImmediate(burst);
  };
  burst();
});
async function pool(n, width, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => { while (next < n) await fn(next++); }));
}
(async () => {
  const tcp = {};
  await pool(Number(nTcp), 200, () => new Promise((done) => {
    const s = net.connect({ host, port: Number(port) });
    const end = (k) => { tcp[k] = (tcp[k] || 0) + 1; s.destroy(); done(); };
    s.setTimeout(5000, () => end('timeout'));
    s.once('connect', () => end('connected'));
    s.once('error', (e) => end(e.code));
  }));
  const r = new dns.promises.Resolver({ timeout: 3000, tries: 1 });
  r.setServers(['127.0.0.1']);
  const answers = {};
  await pool(Number(nDns), Number(width), (i) => r.resolve4('q' + i + '.' + tag + '.invalid').then(() => 'resolved', (e) => e.code).then((k) => { answers[k] = (answers[k] || 0) + 1; }));
  const full = await fullRate(Number(nFull), '127.0.0.11', 53, 'full');
  const direct = await fullRate(Number(nDirect), host, 53, 'direct');
  console.log(JSON.stringify({ tcp, dns: answers, full, direct }));
})();`;

/** The kernel's high-water mark of this process's RSS (VmHWM), in bytes; NaN off Linux. */
async function vmHwm() {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile('/proc/self/status', 'utf8').catch(() => '');
  const kb = /^VmHWM:\s+(\d+) kB/m.exec(status);
  return kb ? Number(kb[1]) * 1024 : NaN;
}

async function auditFlood(docker) {
  const { Sentry, runAgent, verifyAuditChain, resourceLabels, sealAudit } = await import('../dist/index.js');
  const id = `${runId}-p3`;
  const network = `lbx-${id}-decoy`;
  const labels = resourceLabels({ runId, role: 'decoy' });
  await docker.createNetwork({ name: network, internal: false, labels, subnet: `10.213.${192 + (randomBytes(1)[0] % 8)}.0/24` });
  const decoy = await docker.createContainer({ name: `lbx-${id}-decoy`, image: imageRef('agent'), entrypoint: ['sleep', '600'], labels, networkMode: network, capDrop: ['ALL'], user: '1000:1000' });
  await docker.start(decoy);
  const decoyIp = (await docker.inspect(decoy)).NetworkSettings.Networks[network].IPAddress;
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
  const dir = runDir(id);
  let sentry;
  try {
    sentry = await Sentry.start(docker, { runId: id, task: 'flood', auditDir: path.join(dir, 'sandboxes', 'sentry-1'), attachNetworks: [network] });
    const identity = { runId: id, task: 'flood', iteration: 1 };
    let output = '';
    const sink = new (await import('node:stream')).Writable({ write: (c, _e, cb) => ((output += c), cb()) });
    const t0 = performance.now();
    const agent = await runAgent(docker, sentry, { ...identity, cmd: ['node', '-e', FLOOD, decoyIp, '7000', String(P3_TCP), String(P3_DNS), id, String(P3_WIDTH), String(P3_FULL), String(P3_DIRECT)], limits: { memoryBytes: 1024 ** 3, cpus: 1, pids: 256 }, timeoutMs: 300_000, stdout: sink, stderr: sink });
    const agentMs = performance.now() - t0;
    // The sentry's own peak memory (its packet logger and DNS front read the flood), from its
    // cgroup (v2 memory.peak, v1 max_usage_in_bytes), before it is stopped; n/a without either.
    const sentryPeak = await docker.exec(sentry.id, ['sh', '-c', 'cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes']).then((r) => (r.exitCode === 0 ? Number(r.stdout.trim()) : NaN), () => NaN);
    // The ingesting process's exact peak RSS during collect: the kernel's high-water mark
    // (VmHWM), reset just before (clear_refs 5), rather than a sample every 50 ms.
    const hwmReset = await writeFile('/proc/self/clear_refs', '5').then(() => true, () => false);
    const t1 = performance.now();
    const collected = await sentry.collect(identity);
    const ingestMs = performance.now() - t1;
    const ingestPeak = hwmReset ? await vmHwm() : NaN;
    await sentry.stop();
    sentry = undefined;
    await sealAudit(id);
    const seen = JSON.parse(output.trim().split('\n').pop() || '{}');
    const records = collected.records;
    const kept = records.filter((r) => !r.aggregate && r.kind !== 'loss');
    const aggregates = records.filter((r) => r.aggregate);
    const sum = (rs) => rs.reduce((n, r) => n + r.count, 0);
    const byKind = (k) => ({ kept: kept.filter((r) => r.kind === k).length, aggregated: sum(aggregates.filter((r) => r.kind === k)) });
    const losses = records.filter((r) => r.kind === 'loss');
    const loss = sum(losses.filter((r) => r.rule !== 'dns-front' && r.rule !== 'out-udp'));
    // Per path: records, aggregates and loss records of one rule (the DNS front's `dns`, the
    // firewall's `out-udp`) against what the agent sent that way.
    const byRule = (rule, lossRule) => {
      const lost = losses.filter((r) => r.rule === lossRule);
      return { records: sum(records.filter((r) => r.kind === 'dns' && r.rule === rule)), lost: sum(lost), dropped: lost.reduce((n, r) => n + (r.loss?.kernelDropped ?? 0), 0) };
    };
    const front = byRule('dns', 'dns-front');
    const direct = byRule('out-udp', 'out-udp');
    const t2 = performance.now();
    const chain = await verifyAuditChain(dir);
    const verifyMs = performance.now() - t2;
    const size = (await stat(path.join(dir, 'audit.jsonl'))).size;
    const p = byKind('packet');
    const d = byKind('dns');
    const tcpMade = Object.values(seen.tcp ?? {}).reduce((a, b) => a + b, 0);
    const dnsMade = Object.values(seen.dns ?? {}).reduce((a, b) => a + b, 0);
    // A blocked UDP send fails at once (EPERM from the REJECT): it is an attempt all the same.
    const fullMade = (seen.full?.sent ?? 0) + (seen.full?.failed ?? 0);
    const directMade = (seen.direct?.sent ?? 0) + (seen.direct?.failed ?? 0);
    process.stdout.write(
      [
        '',
        `P3 audit flood (one iteration, agent exit ${agent.exitCode}, ${(agentMs / 1000).toFixed(1)} s in the agent):`,
        `  attempts made by the agent:   ${tcpMade} TCP ${JSON.stringify(seen.tcp)}, ${dnsMade} DNS ${JSON.stringify(seen.dns)}`,
        `  firewall counted (NFLOG):     ${collected.traffic.blockedPackets} packets; the DNS front logged ${collected.traffic.dnsBlocked} queries`,
        `  packets: ${p.kept} records + ${p.aggregated} in aggregates + ${loss} lost = ${p.kept + p.aggregated + loss} accounted of ${tcpMade} attempts`,
        `  dns:     ${d.kept} records + ${d.aggregated} in aggregates + ${front.lost + direct.lost} lost = ${d.kept + d.aggregated + front.lost + direct.lost} accounted of ${dnsMade + fullMade + directMade} queries`,
        `  full rate to the DNS front:   ${fullMade} sent in ${((seen.full?.ms ?? 0) / 1000).toFixed(1)} s; with the ${dnsMade} paced ones, ${front.records} in records/aggregates + ${front.lost} lost (${front.dropped} dropped by the kernel at the front's socket): ${front.records + front.lost >= fullMade + dnsMade ? 'ALL ACCOUNTED' : 'MISSING'}`,
        `  full rate straight to :53:    ${directMade} sent in ${((seen.direct?.ms ?? 0) / 1000).toFixed(1)} s (refused at once by the firewall); ${direct.records} with their name in records/aggregates + ${direct.lost} lost (${direct.dropped} NFLOG sequence gaps): ${direct.records + direct.lost >= directMade ? 'ALL ACCOUNTED' : 'MISSING'}`,
        `  audit records written:        ${records.length} (${aggregates.length} aggregates), audit.jsonl ${(size / 1024).toFixed(0)} KiB`,
        `  sent vs accounted (all):      ${tcpMade + dnsMade + fullMade + directMade} attempts sent, ${p.kept + p.aggregated + loss + d.kept + d.aggregated + front.lost + direct.lost} accounted (${p.kept + p.aggregated + loss + d.kept + d.aggregated + front.lost + direct.lost >= tcpMade + dnsMade + fullMade + directMade ? 'ALL ACCOUNTED' : 'MISSING'})`,
        `  ingest (collect) time:        ${ms(ingestMs)}`,
        `  ingesting process peak RSS:   ${Number.isNaN(ingestPeak) ? 'n/a' : `${(ingestPeak / 2 ** 20).toFixed(1)} MiB during collect (VmHWM; target < 200 MiB: ${ingestPeak < 200 * 2 ** 20 ? 'MET' : 'NOT MET'})`}`,
        `  sentry container peak memory: ${Number.isNaN(sentryPeak) ? 'n/a' : `${(sentryPeak / 2 ** 20).toFixed(1)} MiB (cgroup memory.peak, whole flood)`}`,
        `  chain verify:                 ${chain.ok ? 'ok' : `BROKEN ${chain.firstBreak?.message}`}, ${chain.records} records, ${chain.sealed} sealed, ${ms(verifyMs)}`,
        `  orchestrator peak RSS:        ${(peakRss / 2 ** 20).toFixed(1)} MiB (target < 200 MiB: ${peakRss < 200 * 2 ** 20 ? 'MET' : 'NOT MET'})`,
        '',
      ].join('\n'),
    );
  } finally {
    clearInterval(sampler);
    if (sentry) await sentry.stop().catch(() => undefined);
    await docker.remove(decoy).catch(() => undefined);
    await docker.removeNetwork(network).catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// S. Repository-size sweep

const SIZE_ITERATIONS = Number(process.env.BENCH_SIZE_ITERATIONS ?? 3);
const APPEND = 'echo "one more line" >> notes.txt';

/** The example repository plus `files` generated files (500 per directory), one commit. */
async function sizedRepo(files) {
  const dir = await mkdtemp(path.join(tmpdir(), `lbx-bench-size${files}-`));
  made.push(dir);
  await createExampleRepo(dir);
  for (let d = 0; d * 500 < files; d += 1) {
    const sub = path.join(dir, 'gen', `d${d}`);
    await mkdir(sub, { recursive: true });
    const writes = [];
    for (let i = d * 500; i < Math.min(files, (d + 1) * 500); i += 1) writes.push(writeFile(path.join(sub, `f${i}.txt`), `generated file ${i}\n`));
    await Promise.all(writes);
  }
  await execa('git', ['add', '-A'], { cwd: dir });
  // gc.auto=0: 100,000 loose objects would start a detached gc that packs them away while the
  // bash loop's clone copies them ("failed to copy file").
  await execa('git', ['config', 'gc.auto', '0'], { cwd: dir });
  await execa('git', ['-c', 'user.name=bench', '-c', 'user.email=b@localhost', '-c', 'commit.gpgsign=false', 'commit', '-qm', `${files} files`], { cwd: dir });
  return dir;
}

// The bash loop does the same Docker and git work as the loop, whole: it clones the repository
// (loopbox checks out a worktree), then per iteration an agent run, a verify run and a commit.
const SIZE_BASH_LOOP = `set -euo pipefail
now() { date +%s%N; }
c0=$(now)
git clone -q "$SRC" "$WT"
c1=$(now)
echo "clone $(( (c1 - c0) / 1000000 ))"
for i in $(seq 1 "$N"); do
  t0=$(now)
  docker run --rm $LABELS -u "$(id -u):$(id -g)" -v "$WT":/workspace -w /workspace "$IMAGE" sh -c '${APPEND}'
  t1=$(now)
  docker run --rm $LABELS --network none -v "$WT":/workspace "$IMAGE" true
  t2=$(now)
  git -C "$WT" add -A && git -C "$WT" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false commit -qm wip
  t3=$(now)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) $(( (t3 - t2) / 1000000 ))"
done`;

/** Median ms of `git status` on the tree after one appended line (what a snapshot is compared with). */
async function gitStatusMs(worktree) {
  const times = [];
  for (let i = 0; i < 3; i += 1) {
    await execa('sh', ['-c', APPEND], { cwd: worktree });
    const t0 = performance.now();
    await execa('git', ['status', '--porcelain'], { cwd: worktree });
    times.push(performance.now() - t0);
  }
  return median(times);
}

async function sizePoint(docker, files, image) {
  const plain = await sizedRepo(files);
  const repo = await sizedRepo(files);
  const clone = `${plain}-clone`;
  made.push(clone);
  const bashT0 = performance.now();
  const { stdout } = await execa('bash', ['-c', SIZE_BASH_LOOP], { env: { N: String(SIZE_ITERATIONS), SRC: plain, WT: clone, IMAGE: image, LABELS: labels.join(' ') } });
  const bashWhole = performance.now() - bashT0;
  const [cloneLine, ...iterLines] = stdout.trim().split('\n');
  const bashIters = iterLines.map((l) => l.split(' ').map(Number).reduce((a, b) => a + b, 0));
  const statusMs = await gitStatusMs(clone);
  const config = parseConfig({
    agent: { type: 'command', command: ['sh', '-c', APPEND], timeout: '120s' },
    verify: { command: ['false'], timeout: '300s' },
    loop: { maxIterations: SIZE_ITERATIONS, noProgress: SIZE_ITERATIONS + 1, oscillationWindow: 2 },
    sandbox: { memory: '1g', cpus: 1, pids: 256 },
  });
  const records = [];
  const sizeRun = `${runId}-s${files}`;
  sizeRuns.push(sizeRun);
  const loopT0 = performance.now();
  const loopStartEpoch = Date.now();
  const summary = await runLoop(docker, {
    repo,
    taskFile: path.join(repo, 'tasks', 'fix-add.md'),
    config,
    runId: sizeRun,
    signal: abort.signal,
    onEvent: (e) => e.type === 'iteration-end' && records.push(e.record),
  });
  const loopWhole = performance.now() - loopT0;
  if (summary.endState !== 'capped') say(`warning: ${files}-file loop ended ${summary.endState} (${summary.reason}), expected capped`);
  const dur = (r) => Date.parse(r.endedAt) - Date.parse(r.startedAt);
  const stepNames = ['ownership', 'snapshot', 'restore', 'commit', 'verifyCopy', 'verifyRun'];
  const steps = Object.fromEntries(stepNames.map((n) => [n, median(records.map((r) => r.steps?.[n] ?? 0))]));
  // After the first iteration (the first snapshot reads every file: its stat cache is cold).
  const laterSnapshots = records.slice(1).map((r) => r.steps?.snapshot ?? 0);
  return {
    files,
    bash: median(bashIters),
    loopbox: median(records.map(dur)),
    agent: median(records.map((r) => r.agent.durationMs)),
    steps,
    whole: { loopbox: loopWhole, bash: bashWhole, clone: Number(cloneLine.split(' ')[1]), startUp: records.length ? Date.parse(records[0].startedAt) - loopStartEpoch : NaN },
    snapshot: { later: laterSnapshots.length ? median(laterSnapshots) : NaN, first: records[0]?.steps?.snapshot ?? NaN, gitStatus: statusMs },
  };
}

/** Least-squares slope of y over x, per 1,000 x. */
function slope(points, y) {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((a, p) => a + p.files, 0) / n;
  const my = points.reduce((a, p) => a + y(p), 0) / n;
  const num = points.reduce((a, p) => a + (p.files - mx) * (y(p) - my), 0);
  const den = points.reduce((a, p) => a + (p.files - mx) ** 2, 0);
  return (num / den) * 1000;
}

async function repoSizeSweep(docker, sizes) {
  const image = imageRef('agent');
  const points = [];
  for (const files of sizes) {
    say(`S: ${files} tracked files, bash loop and loopbox x${SIZE_ITERATIONS}`);
    // One size failing (e.g. past the snapshot's file limit) still reports the others.
    try {
      points.push(await sizePoint(docker, files, image));
    } catch (error) {
      say(`S: ${files} files failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  const out = ['', `repository size (agent appends one line; ${SIZE_ITERATIONS} iterations each; medians per iteration):`];
  const cols = ['files', 'bash', 'loopbox', 'ratio', 'agent', 'ownership', 'snapshot', 'restore', 'commit', 'verifyCopy', 'verifyRun'];
  out.push(cols.map((c, i) => (i ? c.padStart(11) : c.padEnd(8))).join(''));
  for (const p of points) {
    const ratio = p.loopbox / p.bash;
    const cells = [String(p.files).padEnd(8), ms(p.bash), ms(p.loopbox), `${ratio.toFixed(2)}x`, ms(p.agent), ...cols.slice(5).map((c) => ms(p.steps[c]))];
    out.push(cells.map((c, i) => (i ? c.padStart(11) : c)).join(''));
  }
  for (const p of points) out.push(`  ${p.files} files: per iteration loopbox / bash ${(p.loopbox / p.bash).toFixed(2)}x`);
  out.push('', `whole run (${SIZE_ITERATIONS} iterations, start to end; the bash loop clones the repository first):`);
  out.push(`${'files'.padEnd(8)}${['loopbox', 'bash+clone', 'clone', 'lb start-up', 'ratio', 'snap 1st', 'snap later', 'git status', 'snap/status'].map((c) => c.padStart(12)).join('')}`);
  for (const p of points) {
    const w = p.whole;
    const sn = p.snapshot;
    const cells = [ms(w.loopbox), ms(w.bash), ms(w.clone), ms(w.startUp), `${(w.loopbox / w.bash).toFixed(2)}x`, ms(sn.first), ms(sn.later), ms(sn.gitStatus), `${(sn.later / sn.gitStatus).toFixed(2)}x`];
    out.push(`${String(p.files).padEnd(8)}${cells.map((c) => c.padStart(12)).join('')}`);
  }
  for (const p of points) {
    const whole = p.whole.loopbox / p.whole.bash;
    const snap = p.snapshot.later / p.snapshot.gitStatus;
    out.push(`  ${p.files} files: whole run loopbox / bash+clone ${whole.toFixed(2)}x (target <= 1.2x: ${whole <= 1.2 ? 'MET' : 'NOT MET'}); snapshot / git status ${snap.toFixed(2)}x (target <= 2x: ${snap <= 2 ? 'MET' : 'NOT MET'})`);
  }
  if (points.length > 1) {
    const f = (x) => `${x.toFixed(1)} ms`;
    out.push(`  slope per 1,000 files: loopbox ${f(slope(points, (p) => p.loopbox))}, bash ${f(slope(points, (p) => p.bash))}`);
    out.push(`    steps: ${cols.slice(5).map((c) => `${c} ${f(slope(points, (p) => p.steps[c]))}`).join(', ')}`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

const sizeArg = process.argv.find((a) => a === '--sizes' || a.startsWith('--sizes='));
const sweepOnly = sizeArg !== undefined;
const sweepSizes = sizeArg?.includes('=') ? sizeArg.split('=')[1].split(',').map(Number) : sweepOnly ? [1000, 20000, 100000] : [20000];
const sizeRuns = [];

// Runs in the sentry as the gateway's uid: alternates direct and gateway requests, new
// connection each, and prints the per-request times in ms as JSON.
const GATEWAY_CLIENT = `
import http.client, json, sys, time
ip, port, n_models, n_chat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chat = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
def one(host, p, method, path, body):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, p, timeout=60)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse(); r.read(); c.close()
    if r.status != 200: raise SystemExit("HTTP %d from %s:%d%s" % (r.status, host, p, path))
    return (time.perf_counter() - t0) * 1000
out = {}
for name, method, path, body, n in (("models", "GET", "/v1/models", None, n_models), ("chat", "POST", "/v1/chat/completions", chat, n_chat)):
    d, g = [], []
    for i in range(n + 3):
        a, b = one(ip, port, method, path, body), one("127.0.0.1", 81, method, path, body)
        if i >= 3: d.append(a); g.append(b)  # the first three warm up
    out[name] = {"direct": d, "gateway": g}
print(json.dumps(out))
`;

const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
};

/** G: the gateway's added latency per request, against a direct call in the same run. */
async function gatewayLatency(docker) {
  const auditDir = await mkdtemp(path.join(tmpdir(), 'lbx-bench-gw-'));
  made.push(auditDir);
  const sentry = await Sentry.start(docker, { runId, auditDir });
  try {
    const model = await findModelServer(docker);
    const nModels = Number(process.env.BENCH_GATEWAY_REQUESTS ?? 300);
    const nChat = Math.max(10, Math.round(nModels / 6));
    const res = await docker.exec(sentry.id, ['python3', '-I', '-c', GATEWAY_CLIENT, model.ip, String(model.port), String(nModels), String(nChat)], 'lbxgw');
    if (res.exitCode !== 0) throw new Error(`gateway bench client failed: ${res.stderr || res.stdout}`);
    const data = JSON.parse(res.stdout.trim().split('\n').pop());
    const lines = ['', 'model gateway: added latency per request (inside the sentry, new connection per request, same run):'];
    lines.push(`  ${'request'.padEnd(28)} ${'n'.padStart(4)}  ${'direct p50/p95'.padStart(16)}  ${'gateway p50/p95'.padStart(16)}  ${'added p50/p95'.padStart(15)}`);
    let addedP50 = 0;
    for (const [name, label] of [['models', 'GET /v1/models'], ['chat', 'POST chat, max_tokens 1']]) {
      const { direct, gateway } = data[name];
      const added = gateway.map((g, i) => g - direct[i]);
      if (name === 'models') addedP50 = pct(added, 0.5);
      const f = (xs) => `${pct(xs, 0.5).toFixed(2)}/${pct(xs, 0.95).toFixed(2)} ms`;
      lines.push(`  ${label.padEnd(28)} ${String(direct.length).padStart(4)}  ${f(direct).padStart(16)}  ${f(gateway).padStart(16)}  ${f(added).padStart(15)}`);
    }
    lines.push(`  added p50 (GET /v1/models): ${addedP50.toFixed(2)} ms  (target < 2 ms: ${addedP50 < 2 ? 'MET' : 'NOT MET'})`, '');
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await sentry.stop();
  }
}

const P_ITERATIONS = Number(process.env.BENCH_PARALLEL_ITERATIONS ?? 3);
const pRuns = [];
const abort = new AbortController();
process.once('SIGINT', () => abort.abort());
const calls = [];
const docker = timedDocker(calls);
const made = [];
let startedModel = false;
// BENCH_ONLY=p3 (or --audit-flood) runs only the audit flood: it needs the images, not the model server.
const floodOnly = process.env.BENCH_ONLY === 'p3' || process.argv.includes('--audit-flood');
const gatewayOnly = process.env.BENCH_ONLY === 'gateway';
try {
  if (floodOnly) await buildImages(docker, { onLine: (l) => say(l) });
  else {
    startedModel = await setup(docker);
    if (!sweepOnly) {
      say('G: model gateway latency');
      await gatewayLatency(new DockerClient());
    }
    if (!gatewayOnly) {
      if (!sweepOnly) await defaultSections();
      await repoSizeSweep(docker, sweepSizes);
    }
  }
  if (floodOnly || (!sweepOnly && !gatewayOnly)) {
    say(`P3: audit flood, ${P3_TCP} TCP attempts and ${P3_DNS} DNS queries`);
    await auditFlood(new DockerClient());
  }
} finally {
  await cleanup(docker, made, startedModel);
}

async function defaultSections() {
  const image = imageRef('agent');
  const plain = await mkdtemp(path.join(tmpdir(), 'lbx-bench-plain-'));
  const repo = await mkdtemp(path.join(tmpdir(), 'lbx-bench-loop-'));
  made.push(plain, repo);
  await createExampleRepo(plain);
  await createExampleRepo(repo);
  await execa('docker', ['run', '--rm', ...labels, image, 'true']); // warm-up, not timed
  say(`A: bare docker run x${N}`);
  const bare = await bareDocker(image);
  say(`B: bash loop x${N}`);
  const bash = await bashLoop(image, plain);
  say(`L: loopbox loop x${N}`);
  calls.length = 0;
  const lb = await loopbox(docker, repo, calls);
  report({ bare, bash, lb });

  // Many loops: 4 at once vs the same 4 one after another, then 8 queued behind 2 at once.
  const multi = await mkdtemp(path.join(tmpdir(), 'lbx-bench-par-'));
  made.push(multi);
  await createExampleRepo(multi);
  for (let i = 1; i <= 8; i += 1) await writeFile(path.join(multi, 'tasks', `p${i}.md`), `# p${i}\n`);
  await execa('git', ['add', '-A'], { cwd: multi });
  await execa('git', ['-c', 'user.name=bench', '-c', 'user.email=b@localhost', 'commit', '-qm', 'tasks'], { cwd: multi });
  const plainDocker = new DockerClient();
  say(`P: 4 loops x${P_ITERATIONS} iterations, one after another`);
  const seq = await parallelLoops(plainDocker, multi, 4, 1);
  say(`P: 4 loops x${P_ITERATIONS} iterations, at once`);
  const par = await parallelLoops(plainDocker, multi, 4, 4);
  say('Q: 8 loops queued, 2 at once');
  const queued = await parallelLoops(plainDocker, multi, 8, 2);
  const ratio = par.ms / seq.ms;
  process.stdout.write(
    [
      '',
      `parallel loops (${P_ITERATIONS} no-op iterations each, model slots: ${par.slots}; agents never exceed the slots):`,
      `  4 loops one after another:            ${ms(seq.ms)}`,
      `  4 loops at once:                      ${ms(par.ms)}`,
      `  at once / one after another:          ${ratio.toFixed(2)}  (target <= 0.5: ${ratio <= 0.5 ? 'MET' : 'NOT MET'})`,
      `  8 loops queued (2 at once): ${ms(queued.ms)}, orchestrator peak RSS ${(queued.peakRss / 2 ** 20).toFixed(1)} MiB`,
      '',
    ].join('\n'),
  );
}
