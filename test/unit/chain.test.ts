// The tamper-evident audit log (issue 9.1): JCS against RFC 8785's own examples, and each kind
// of tampering a host-level attacker might try, detected with a message that says where.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { canonicalize, CHECKPOINTS_FILE, lineHash, loadAuditKey, parseCheckpoint, parseVerifierKey, signCheckpoint, verifyAuditChain } from '../../src/audit/chain.js';
import { appendAudit, auditFile, sealAudit, setCheckpointPolicy } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { runDir } from '../../src/common/paths.js';

describe('RFC 8785 canonical JSON', () => {
  it('matches the RFC 8785 §3.2.2 example (numbers, string escaping, literals)', () => {
    // The RFC's input, as JSON text, and its expected output byte for byte.
    const input = '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}';
    expect(canonicalize(JSON.parse(input))).toBe('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}');
  });

  it('sorts properties by UTF-16 code units as in RFC 8785 §3.2.3', () => {
    const input = '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control", "\\u00f6": "Latin Small Letter O With Diaeresis"}';
    // Values in output order (re-parsing would move "1" first: JS orders integer keys first).
    const values = [...canonicalize(JSON.parse(input)).matchAll(/:"([^"]*)"/g)].map((m) => m[1]);
    expect(values).toEqual(['Carriage Return', 'One', 'Control', 'Latin Small Letter O With Diaeresis', 'Euro Sign', 'Emoji: Grinning Face', 'Hebrew Letter Dalet With Dagesh']);
  });

  it('prints numbers as RFC 8785 Appendix B does, and refuses what JCS cannot represent', () => {
    const cases: [number, string][] = [[0, '0'], [-0, '0'], [5e-324, '5e-324'], [1.7976931348623157e308, '1.7976931348623157e+308'], [9007199254740992, '9007199254740992'], [1e21, '1e+21'], [0.000001, '0.000001'], [1e-7, '1e-7']];
    for (const [n, s] of cases) expect(canonicalize(n)).toBe(s);
    expect(() => canonicalize(Number.NaN)).toThrow(/NaN/);
    expect(() => canonicalize(Number.POSITIVE_INFINITY)).toThrow(/Infinity/);
    expect(() => canonicalize('\ud800')).toThrow(/surrogate/);
  });
});

function record(i: number): AuditRecord {
  return {
    time: new Date(Date.UTC(2026, 10, 24, 18, 0, i)).toISOString(), runId: 'chain-run', task: 't', iteration: 1, role: 'agent', kind: 'packet',
    protocol: 'tcp', family: 'ipv4', direction: 'out', src: '10.0.0.3', srcPort: 40000 + i, dst: '10.0.0.2', dstPort: 7000, uid: 1000,
    query: null, queryType: null, icmpType: null, verdict: 'rejected', rule: 'out-tcp', count: 1,
  };
}

describe('audit chain', () => {
  let state: string;
  let env: NodeJS.ProcessEnv;
  let file: string;
  const runId = 'chain-run';

  beforeEach(async () => {
    state = await mkdtemp(path.join(tmpdir(), 'lbx-chain-'));
    env = { LOOPBOX_STATE_DIR: state };
    file = auditFile(runId, env);
    await (await import('node:fs/promises')).mkdir(runDir(runId, env), { recursive: true });
    // Checkpoints at 4 and 8 records; the last 2 records stay unsealed until sealAudit.
    setCheckpointPolicy({ everyRecords: 4, everyMs: 3_600_000 });
    for (let i = 0; i < 10; i += 2) await appendAudit(runId, [record(i), record(i + 1)], env);
  });
  afterEach(async () => {
    await sealAudit(runId, env).catch(() => undefined);
    setCheckpointPolicy({});
    await rm(state, { recursive: true, force: true });
  });

  const lines = async (): Promise<string[]> => (await readFile(file, 'utf8')).split('\n').filter(Boolean);
  const verifyRun = (): ReturnType<typeof verifyAuditChain> => verifyAuditChain(runDir(runId, env), { env });

  it('chains every record to a run header and seals with signed checkpoints; unsealed ones are reported', async () => {
    const all = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(all[0]).toMatchObject({ kind: 'header', seq: 0, prev: null, runId });
    expect(all[1]).toMatchObject({ seq: 1, prev: all[0]!.hash, aggregate: null });
    for (const l of all) expect(l.hash).toBe(lineHash(l));
    expect(await verifyRun()).toMatchObject({ ok: true, records: 10, sealed: 8, unsealed: 2, checkpoints: 2 });
    await sealAudit(runId, env);
    expect(await verifyRun()).toMatchObject({ ok: true, records: 10, sealed: 10, unsealed: 0, checkpoints: 3 });
    const note = (JSON.parse((await readFile(path.join(runDir(runId, env), CHECKPOINTS_FILE), 'utf8')).split('\n')[2]!) as { note: string }).note;
    expect(note).toMatch(/^loopbox\.audit\/chain-run\n10\n[A-Za-z0-9+/]{43}=\ntime \S+\n\n\u2014 loopbox-audit-\S+ \S+\n$/);
    expect(parseCheckpoint(note)).toMatchObject({ size: 10, head: all[10]!.hash });
    expect((await stat(path.join(state, 'audit-key.pem'))).mode & 0o777).toBe(0o600);
  });

  it('detects one changed byte and names the line', async () => {
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.replace('"srcPort":40003', '"srcPort":40004'));
    const v = await verifyRun();
    expect(v.ok).toBe(false);
    expect(v.firstBreak).toMatchObject({ line: 5, seq: 4 });
    expect(v.firstBreak?.message).toMatch(/line 5 \(seq 4\): hash does not match.*changed/);
  });

  it('detects a deleted line', async () => {
    const all = await lines();
    all.splice(3, 1);
    await writeFile(file, `${all.join('\n')}\n`);
    const v = await verifyRun();
    expect(v.firstBreak?.message).toMatch(/line 4 \(seq 4\): seq 4 where 3 was expected: a record was deleted/);
  });

  it('detects two reordered lines', async () => {
    const all = await lines();
    [all[6], all[7]] = [all[7]!, all[6]!];
    await writeFile(file, `${all.join('\n')}\n`);
    const v = await verifyRun();
    expect(v.firstBreak?.message).toMatch(/line 7 \(seq 7\): seq 7 where 6 was expected/);
  });

  it('detects truncation, mid-line and at a line end below a checkpoint', async () => {
    const size = (await stat(file)).size;
    await truncate(file, size - 10);
    let v = await verifyRun();
    expect(v.firstBreak?.message).toMatch(/line 11: not a JSON object.*truncated/);
    const all = await lines();
    await writeFile(file, `${all.slice(0, 7).join('\n')}\n`);
    v = await verifyRun();
    expect(v.ok).toBe(false);
    expect(v.firstBreak?.message).toMatch(/audit\.checkpoints line 2 \(seq 8\): seals 8 records, but the log holds 6: records were removed/);
  });

  it('detects a chain rewritten and re-hashed without the key, and checkpoints re-signed with another key', async () => {
    // The attacker changes record 2 and recomputes every hash after it: the chain is consistent.
    const all = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>);
    all[2]!.dst = '10.0.0.99';
    for (let i = 2; i < all.length; i += 1) {
      all[i]!.prev = all[i - 1]!.hash;
      delete all[i]!.hash;
      all[i]!.hash = lineHash(all[i]!);
    }
    await writeFile(file, `${all.map((l) => JSON.stringify(l)).join('\n')}\n`);
    let v = await verifyRun();
    expect(v.ok).toBe(false);
    expect(v.firstBreak?.message).toMatch(/audit\.checkpoints line 1 \(seq 4\): head hash differs from record seq 4: the chain up to it was rewritten/);
    // ... then signs fresh checkpoints with a key of its own, under the same name.
    const own = await loadAuditKey({ LOOPBOX_STATE_DIR: await mkdtemp(path.join(tmpdir(), 'lbx-evil-')) });
    const real = await loadAuditKey(env);
    const evil = { ...own, name: real.name };
    await writeFile(path.join(runDir(runId, env), CHECKPOINTS_FILE), `${JSON.stringify({ note: signCheckpoint(evil, `loopbox.audit/${runId}`, 10, all[10]!.hash as string, new Date().toISOString()) })}\n`);
    v = await verifyRun();
    expect(v.firstBreak?.message).toMatch(/audit\.checkpoints line 1 \(seq 10\): no valid signature by loopbox-audit-/);
    // Given the attacker's public key instead, the forgery verifies: the verifier key must be
    // one stored away from the host beforehand (`loopbox audit key`), not one read from it.
    expect((await verifyAuditChain(runDir(runId, env), { key: parseVerifierKey(own.vkey) })).ok).toBe(true);
  });

  it('reads verifier keys in the vkey form and as PEM, and refuses a vkey whose id does not match', async () => {
    const real = await loadAuditKey(env);
    expect(parseVerifierKey(real.vkey).vkey).toBe(real.vkey);
    expect((await verifyAuditChain(runDir(runId, env), { key: parseVerifierKey(real.vkey) })).ok).toBe(true);
    const pem = `# ${real.name}\n${real.publicKey.export({ format: 'pem', type: 'spki' }).toString()}`;
    expect(parseVerifierKey(pem).vkey).toBe(real.vkey);
    const other = generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' }).subarray(12);
    const [name, id] = real.vkey.split('+');
    expect(() => parseVerifierKey(`${name}+${id}+${Buffer.concat([Buffer.from([1]), other]).toString('base64')}`)).toThrow(/does not match/);
  });

  it('continues the chain across writers (a resumed run) and cuts a torn last line', async () => {
    await sealAudit(runId, env);
    await writeFile(file, `${await readFile(file, 'utf8')}{"torn":`);
    await appendAudit(runId, [record(20)], env);
    await sealAudit(runId, env);
    expect(await verifyRun()).toMatchObject({ ok: true, records: 11, unsealed: 0 });
  });

  it('seals records after T seconds even when no more arrive', async () => {
    await sealAudit(runId, env);
    setCheckpointPolicy({ everyRecords: 1000, everyMs: 200 });
    await appendAudit(runId, [record(30)], env);
    expect((await verifyRun()).unsealed).toBe(1);
    await new Promise((r) => setTimeout(r, 500));
    expect((await verifyRun()).unsealed).toBe(0);
  });
});
