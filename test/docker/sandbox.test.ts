// The foundation's security claims, shown against the real engine: a hostile script in a
// sandbox tries every way out; each attempt fails for it AND is in the audit log with the
// right run, task, iteration and role; the model stays reachable; nothing is left behind.
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { ContainerInspectInfo } from 'dockerode';
import { execa } from 'execa';
import { auditKeyFile } from '../../src/audit/chain.js';
import type { StoredAuditRecord as AuditRecord } from '../../src/audit/record.js';
import { resourceLabels } from '../../src/docker/labels.js';
import { MODEL_NETWORK } from '../../src/model/network.js';
import { configSchema } from '../../src/config/schema.js';

const DEFAULTS = configSchema.parse({}).sandbox;
import { imageRef } from '../../src/images/catalog.js';
import { findModelServer } from '../../src/model/network.js';
import { auditFile } from '../../src/audit/log.js';
import type { RunRecord } from '../../src/runs/registry.js';
import { type Decoy, beginTestRun, cli, docker, endTestRun, parseJsonLines, remaining, repoRoot, startDecoy, testRunId } from './helpers.js';

interface Attempt {
  name: string;
  blocked: boolean;
  detail: string;
}

const fixtures = path.join(repoRoot, 'test', 'fixtures');

describe('sandbox run (real Docker, real firewall)', () => {
  const runId = testRunId('sbx');
  let record: RunRecord;
  let decoy: Decoy;
  let workspace: string;
  let modelIp: string;

  beforeAll(async () => {
    record = await beginTestRun(runId);
    decoy = await startDecoy(runId);
    workspace = await mkdtemp(path.join(tmpdir(), 'lbx-ws-'));
    // The agent runs as uid 1000; this stands in for a worktree it may write.
    await chmod(workspace, 0o777);
    const model = await findModelServer(docker);
    expect(model, 'the global setup starts a model server').toBeDefined();
    modelIp = model!.ip;
  });

  afterAll(async () => {
    await rm(workspace, { recursive: true, force: true });
    if (record) await endTestRun(record);
  });

  it('blocks and logs every escape a hostile script tries, while the model stays reachable', async () => {
    const sandboxRun = `${runId}-hostile`;
    const dnsName = `exfil-${runId}.invalid`;
    const hold = path.join(workspace, 'go');
    const running = cli([
      'sandbox', 'run', '--run-id', sandboxRun, '--task', 'hostile', '--iteration', '3',
      '--attach-network', decoy.network,
      '--mount', `${fixtures}:/loopbox:ro`, '--mount', `${workspace}:/workspace`, '--workdir', '/workspace',
      '-e', `DECOY_V4=${decoy.v4}`, '-e', `DECOY_V6=${decoy.v6 ?? ''}`, '-e', `DECOY_PORT=${decoy.port}`,
      '-e', `DNS_NAME=${dnsName}`, '-e', `MODEL_IP=${modelIp}`, '-e', 'WORKSPACE=/workspace', '-e', 'HOLD_FILE=/workspace/go',
      '-e', `AUDIT_FILE=${auditFile(sandboxRun)}`,
      '--', 'node', '/loopbox/hostile.mjs',
    ]);
    // While the script holds: the live containers have the hardening the sandbox claims.
    const live = async (role: string): Promise<ContainerInspectInfo | undefined> => {
      const found = await docker.listContainers([`loopbox.run-id=${sandboxRun}`, `loopbox.role=${role}`]);
      return found[0] ? docker.inspect(found[0].id) : undefined;
    };
    let agent: ContainerInspectInfo | undefined;
    for (let i = 0; i < 300 && !agent; i += 1) {
      agent = await live('agent');
      if (!agent) await new Promise((r) => setTimeout(r, 100));
    }
    const sentry = await live('sentry');
    await writeFile(hold, '');
    // The run finishes before any assertion can fail, so that nothing outlives the test.
    const res = await running;
    expect(agent, 'the agent container was seen running').toBeDefined();
    expect(sentry, 'the sentry container was seen running').toBeDefined();
    expect(agent!.HostConfig).toMatchObject({ ReadonlyRootfs: true, CapDrop: ['ALL'], PidsLimit: DEFAULTS.pids, Memory: DEFAULTS.memory, NetworkMode: `container:${sentry!.Id}` });
    // The container's init holds only what its in-container deadline needs to drop to the
    // agent's uid (src/sandbox/specs.ts deadline()); the command itself runs as uid 1000 with
    // every capability cleared.
    expect(((agent!.HostConfig.CapAdd ?? []) as string[]).slice().sort()).toEqual(['KILL', 'SETGID', 'SETUID']);
    expect(agent!.Config.Entrypoint).toEqual(expect.arrayContaining(['setpriv', '--reuid=1000', '--regid=1000', '--clear-groups', '--inh-caps=-all']));
    expect(agent!.HostConfig.SecurityOpt).toEqual(['no-new-privileges']);
    expect(agent!.HostConfig.Privileged).toBe(false);
    expect(sentry!.HostConfig).toMatchObject({ CapDrop: ['ALL'], CapAdd: ['NET_ADMIN', 'NET_BIND_SERVICE', 'SETUID', 'SETGID', 'CHOWN'], SecurityOpt: ['no-new-privileges'], PidsLimit: 64, Memory: 128 * 1024 ** 2, Privileged: false });
    // The audit signing key is in no container: no bind mount holds it or a folder above it.
    for (const c of [agent!, sentry!]) {
      for (const bind of c.HostConfig.Binds ?? []) {
        const source = bind.split(':')[0]!;
        expect(auditKeyFile() === source || auditKeyFile().startsWith(`${source}/`), `${c.Name} mounts ${source}`).toBe(false);
      }
    }
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stderr).toContain(`run ${sandboxRun}`);
    const attempts = parseJsonLines<Attempt>(res.stdout).filter((a) => a.name);
    const byName = new Map(attempts.map((a) => [a.name, a]));

    expect(byName.get('model-before')).toMatchObject({ blocked: false, detail: 'HTTP 200' });
    expect(byName.get('model-after')).toMatchObject({ blocked: false, detail: 'HTTP 200' });
    // Positive control: the worktree mount is writable and the write lands on the host.
    expect(byName.get('write-workspace')?.blocked).toBe(false);
    expect(await readFile(path.join(workspace, 'from-agent.txt'), 'utf8')).toBe('ok');

    const mustBlock = [
      'tcp-decoy', 'udp-decoy', 'icmp-decoy', 'udp53-decoy', 'tcp6-decoy', 'dns-lookup', 'dns-direct-embedded', 'model-other-port',
      `read:${auditFile(sandboxRun)}`, 'read:/audit/packets.jsonl', 'read:/audit/dns.log',
      'docker-socket:/var/run/docker.sock', 'docker-socket:/run/docker.sock',
    ];
    for (const name of mustBlock) {
      expect(byName.get(name), `attempt ${name}: ${JSON.stringify(byName.get(name))}`).toMatchObject({ blocked: true });
    }
    // Writes outside the mounts fail because the root file system is read-only (EROFS), not
    // merely because uid 1000 lacks permission: /var/tmp is world-writable, only EROFS stops it.
    for (const target of ['/etc/loopbox-pwned', '/usr/loopbox-pwned', '/loopbox-pwned', '/var/tmp/loopbox-pwned', '/loopbox/pwned']) {
      expect(byName.get(`write:${target}`), `write ${target}`).toMatchObject({ blocked: true, detail: 'EROFS' });
    }
    // Nothing of the run's state is visible: the audit log's folder and /audit are not mounted.
    for (const target of [auditFile(sandboxRun), '/audit/packets.jsonl', '/audit/dns.log']) expect(byName.get(`read:${target}`)?.detail).toBe('ENOENT');
    // TCP fails fast with a reset, not a timeout.
    expect(byName.get('tcp-decoy')?.detail).toBe('ECONNREFUSED');
    expect(byName.get('dns-lookup')?.detail).toBe('ENOTFOUND');
    expect(await readdir(fixtures)).not.toContain('pwned');

    // Every network attempt is in the audit log, attributed exactly.
    const audit = await cli(['audit', '--run', sandboxRun, '--json']);
    expect(audit.exitCode, audit.all).toBe(0);
    const records = parseJsonLines<AuditRecord>(audit.stdout);
    for (const r of records) expect(r).toMatchObject({ runId: sandboxRun, task: 'hostile', iteration: 3, role: 'agent' });
    // Every record's verdict matches its kind; none is an aggregate (far below the limit).
    for (const r of records) {
      // The sandbox's resolver answers NXDOMAIN; a DNS packet aimed elsewhere is refused.
      expect(r.verdict, JSON.stringify(r)).toBe(r.kind === 'dns' && r.rule === 'dns' ? 'nxdomain' : 'rejected');
      expect(r.aggregate).toBeNull();
    }
    const has = (what: Partial<AuditRecord>): boolean => records.some((r) => Object.entries(what).every(([k, v]) => r[k as keyof AuditRecord] === v));
    const rejected = { kind: 'packet', verdict: 'rejected', direction: 'out' } as const;
    expect(has({ ...rejected, protocol: 'tcp', dst: decoy.v4, dstPort: decoy.port, uid: 1000, family: 'ipv4', rule: 'out-tcp' }), 'tcp decoy').toBe(true);
    expect(has({ ...rejected, protocol: 'udp', dst: decoy.v4, dstPort: decoy.port + 1, uid: 1000, rule: 'out-udp' }), 'udp decoy').toBe(true);
    // To port 53 the packet is read as DNS (issue 17): "exfil" is no DNS message, and its bytes are the evidence.
    expect(records.find((r) => r.protocol === 'udp' && r.dst === decoy.v4 && r.dstPort === 53), 'udp/53 decoy').toMatchObject({
      kind: 'dns', verdict: 'rejected', rule: 'out-udp', query: null, dnsError: 'short message (5 bytes, a DNS header has 12)', payload: Buffer.from('exfil').toString('hex'),
    });
    expect(has({ ...rejected, protocol: 'icmp', dst: decoy.v4, icmpType: 8, rule: 'out-icmp' }), 'icmp echo').toBe(true);
    expect(has({ ...rejected, protocol: 'tcp', dst: modelIp, dstPort: 8081 }), 'model ip, other port').toBe(true);
    expect(decoy.v6, 'the decoy network has IPv6').toBeTruthy();
    expect(has({ ...rejected, family: 'ipv6', protocol: 'tcp', dst: decoy.v6!, dstPort: decoy.port, rule: 'out6-tcp' }), 'ipv6').toBe(true);
    expect(has({ kind: 'dns', query: dnsName, verdict: 'nxdomain' }), 'dns name').toBe(true);
    expect(has({ kind: 'dns', query: `direct-${dnsName}`, verdict: 'nxdomain' }), 'dns via 127.0.0.11').toBe(true);
    expect(records.some((r) => r.kind === 'loss'), 'no records lost').toBe(false);
    // The model's own traffic is allowed and not logged per packet.
    expect(records.some((r) => r.dst === modelIp && r.dstPort === 8080)).toBe(false);

    // The table view shows the same records.
    const table = await cli(['audit', '--run', sandboxRun]);
    expect(table.stdout).toContain(dnsName);
    expect(table.stdout).toContain(`${decoy.v4}:${decoy.port}`);

    expect(await remaining(sandboxRun)).toEqual([]);
  });

  it('a flood of blocked packets is never lost silently: records + loss counts = what the firewall saw', async () => {
    const sandboxRun = `${runId}-flood`;
    const flood = `
      const dgram = require('dgram');
      const s = dgram.createSocket('udp4');
      let sent = 0, done = 0;
      const N = 3000;
      for (let i = 0; i < N; i++) s.send(Buffer.from('x'), 9999, '${decoy.v4}', () => { done++; if (done === N) { console.log('sent=' + N); s.close(); } });`;
    const res = await cli(['sandbox', 'run', '--run-id', sandboxRun, '--task', 'flood', '--attach-network', decoy.network, '--', 'node', '-e', flood], { timeoutMs: 120_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stdout).toContain('sent=3000');
    const records = parseJsonLines<AuditRecord>((await cli(['audit', '--run', sandboxRun, '--json'])).stdout);
    const single = records.filter((r) => r.kind === 'packet' && !r.aggregate);
    for (const r of single) expect(r).toMatchObject({ verdict: 'rejected', protocol: 'udp', dst: decoy.v4, dstPort: 9999 });
    // Past 1000 records of a kind in an iteration, the rest are counted in one aggregate.
    expect(single.length).toBeLessThanOrEqual(1000);
    const aggregate = records.filter((r) => r.kind === 'packet' && r.aggregate);
    expect(aggregate.length).toBeLessThanOrEqual(1);
    for (const a of aggregate) {
      expect(a).toMatchObject({ verdict: 'rejected', protocol: 'udp', rule: 'out-udp' });
      expect(a.aggregate).toMatchObject({ distinct: 1, sample: [`${decoy.v4}:9999`], limit: 1000 });
    }
    const lost = records.filter((r) => r.kind === 'loss');
    for (const r of lost) expect(r.verdict).toBe('lost');
    const count = (rs: AuditRecord[]): number => rs.reduce((n, r) => n + r.count, 0);
    expect(count(single) + count(aggregate) + count(lost)).toBe(3000);
    expect(single.length).toBeGreaterThan(0);
    // And the chain over it all verifies.
    const verify = await cli(['audit', 'verify', '--run', sandboxRun]);
    expect(verify.exitCode, verify.all).toBe(0);
    expect(verify.stdout).toMatch(new RegExp(`${sandboxRun}: ok: ${records.length} records, ${records.length} sealed`));
  });

  it('denies changing the firewall from inside, and the rules still hold after the attempt', async () => {
    const sandboxRun = `${runId}-fw`;
    // The sentry image has iptables and bash; run it as the agent (uid 1000, no capabilities).
    const script = [
      'iptables -F OUTPUT; echo "flush rc=$?"',
      'iptables -P OUTPUT ACCEPT; echo "policy rc=$?"',
      `(exec 3<>/dev/tcp/${decoy.v4}/${decoy.port}) 2>/dev/null && echo decoy=connected || echo decoy=blocked`,
    ].join('; ');
    const res = await cli([
      'sandbox', 'run', '--run-id', sandboxRun, '--task', 'firewall', '--image', imageRef('sentry'),
      '--entrypoint', '/bin/bash', '--attach-network', decoy.network, '--', '-c', script,
    ]);
    expect(res.exitCode, res.all).toBe(0);
    expect(res.all).toMatch(/Permission denied|Operation not permitted/);
    expect(res.stdout).toMatch(/flush rc=[1-9]/);
    expect(res.stdout).toContain('decoy=blocked');
    const audit = parseJsonLines<AuditRecord>((await cli(['audit', '--run', sandboxRun, '--json'])).stdout);
    expect(audit.some((r) => r.protocol === 'tcp' && r.dst === decoy.v4 && r.dstPort === decoy.port && r.task === 'firewall' && r.verdict === 'rejected' && r.kind === 'packet')).toBe(true);
    expect(await remaining(sandboxRun)).toEqual([]);
  });

  it('with the firewall rules absent, the internal network alone keeps out what a plain bridge lets through', async () => {
    const sandboxRun = `${runId}-nofw`;
    // Target: a listener in a network namespace the test makes on the host, behind a veth pair:
    // reachable only by the host forwarding to it, the path the outside world would take. A
    // plain bridge forwards there (the control shows it); an --internal one drops it. (Another
    // bridge is no target: Docker isolates bridges from each other whether internal or not.)
    const tag = randomBytes(4).toString('hex');
    const ns = `lbx-${tag}`;
    const [hostIf, nsIf] = [`lbx${tag}h`, `lbx${tag}n`];
    const net = `10.213.${200 + (randomBytes(1)[0]! % 50)}`;
    const target = `${net}.2`;
    const ip = (...args: string[]): Promise<unknown> => execa('ip', args);
    const plain = `lbx-${runId}-plain`;
    let listener: ReturnType<typeof execa> | undefined;
    try {
      await ip('netns', 'add', ns);
      await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
      await ip('link', 'set', nsIf, 'netns', ns);
      await ip('addr', 'add', `${net}.1/30`, 'dev', hostIf);
      await ip('link', 'set', hostIf, 'up');
      await ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${target}/30`, 'dev', nsIf);
      await ip('netns', 'exec', ns, 'ip', 'link', 'set', nsIf, 'up');
      await ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
      await ip('netns', 'exec', ns, 'ip', 'route', 'add', 'default', 'via', `${net}.1`);
      listener = execa('ip', ['netns', 'exec', ns, process.execPath, '-e', `require('net').createServer((s) => s.end('target')).listen(7000, '${target}', () => console.log('listening'))`], { reject: false });
      await new Promise<void>((resolve, reject) => {
        listener!.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
        void listener!.then((r) => reject(new Error(`listener ended: ${String(r.stderr)}`)));
      });
      const probe = `
        const net = require('net');
        const s = net.connect({ host: '${target}', port: 7000 });
        s.setTimeout(4000, () => { console.log('target=timeout'); process.exit(0); });
        s.on('connect', () => { console.log('target=connected'); process.exit(0); });
        s.on('error', (e) => { console.log('target=' + e.code); process.exit(0); });`;
      // Control: from a plain (non-internal) bridge the same probe gets through.
      await docker.createNetwork({ name: plain, internal: false, labels: resourceLabels({ runId, role: 'decoy' }) });
      const control = await execa('docker', ['run', '--rm', '--label', 'loopbox.managed=true', '--label', `loopbox.run-id=${runId}`, '--network', plain, '--user', '1000:1000', imageRef('agent'), 'node', '-e', probe], { reject: false });
      expect(control.stdout, control.stderr).toContain('target=connected');
      const model = await docker.findNetwork(MODEL_NETWORK);
      expect(model?.Internal, `${MODEL_NETWORK} is --internal`).toBe(true);
      const res = await cli(['sandbox', 'run', '--run-id', sandboxRun, '--no-firewall', '--', 'node', '-e', probe]);
      expect(res.exitCode, res.all).toBe(0);
      expect(res.stdout).toMatch(/target=(ENETUNREACH|EHOSTUNREACH|timeout)/);
    } finally {
      listener?.kill();
      await execa('ip', ['link', 'del', hostIf], { reject: false });
      await execa('ip', ['netns', 'del', ns], { reject: false });
      await docker.removeNetwork(plain).catch(() => undefined);
    }
    expect(await remaining(sandboxRun)).toEqual([]);
  });

  it('contains a fork bomb with the pids limit while the host stays responsive', async () => {
    const sandboxRun = `${runId}-bomb`;
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-cfg-'));
    const config = path.join(dir, 'loopbox.yaml');
    await writeFile(config, 'sandbox:\n  pids: 64\n  memory: 256m\n  cpus: 1\n');
    const bomb = cli(['--config', config, 'sandbox', 'run', '--run-id', sandboxRun, '--timeout', '25s', '--', 'bash', '-c', 'b(){ b | b & }; b; sleep 60'], { timeoutMs: 90_000 });
    // While it runs: the engine answers, and the container never holds more than its limit.
    let peak = 0;
    let engineAnswers = 0;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const agents = await docker.listContainers([`loopbox.run-id=${sandboxRun}`, 'loopbox.role=agent']);
      if (agents[0]) {
        const processes = await docker.processes(agents[0].id).catch(() => undefined);
        if (processes) peak = Math.max(peak, processes.length);
        const info = await docker.inspect(agents[0].id).catch(() => undefined);
        if (info) expect(info.HostConfig.PidsLimit).toBe(64);
      }
      await docker.ping();
      engineAnswers += 1;
      await new Promise((r) => setTimeout(r, 500));
    }
    const res = await bomb;
    await rm(dir, { recursive: true, force: true });
    expect(peak, 'the bomb did fork').toBeGreaterThan(5);
    expect(peak).toBeLessThanOrEqual(64);
    expect(engineAnswers).toBeGreaterThan(10);
    expect(res.exitCode, res.all).toBe(124);
    expect(res.stderr).toContain('timed out');
    expect(await remaining(sandboxRun)).toEqual([]);
  });

  it('works with no model server (nothing allowed out) and passes the exit code through', async () => {
    const sandboxRun = `${runId}-nomodel`;
    const model = await findModelServer(docker);
    const gguf = model ? (await docker.inspect(model.containerId)).HostConfig.Binds?.[0]?.split(':')[0] : undefined;
    await cli(['model', 'down']);
    try {
      const res = await cli(['sandbox', 'run', '--run-id', sandboxRun, '--', 'bash', '-c', 'echo hello-from-sandbox; exit 7']);
      expect(res.stdout).toContain('hello-from-sandbox');
      expect(res.exitCode, res.all).toBe(7);
      expect(res.stderr).toContain('no model server running');
      expect(await remaining(sandboxRun)).toEqual([]);
      // A model file llama-server cannot load: the start fails with its last log lines.
      const dir = await mkdtemp(path.join(tmpdir(), 'lbx-badmodel-'));
      await writeFile(path.join(dir, 'broken.gguf'), 'GGUF but not really');
      const bad = await cli(['model', 'up', '--gguf', path.join(dir, 'broken.gguf')]);
      await rm(dir, { recursive: true, force: true });
      expect(bad.exitCode, bad.all).toBe(1);
      expect(bad.stderr).toMatch(/model server exited while starting/);
      expect(bad.stderr).toMatch(/last log lines:\n[\s\S]*\S/);
      expect((await cli(['model', 'status'])).stdout).toContain('not running');
    } finally {
      if (gguf) {
        const dir = await mkdtemp(path.join(tmpdir(), 'lbx-cfg-'));
            await writeFile(path.join(dir, 'loopbox.yaml'), 'model:\n  ctxSize: 131072\n  parallel: 2\n  gpus: none\n');
        const up = await cli(['--config', path.join(dir, 'loopbox.yaml'), 'model', 'up', '--gguf', gguf]);
        expect(up.exitCode, up.all).toBe(0);
        await rm(dir, { recursive: true, force: true });
      }
    }
  });
});
