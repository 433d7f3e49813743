// A tamper-evident audit log (issue 9.1). Every line of `audit.jsonl` carries `seq`, `prev`
// (the previous line's hash) and `hash` = SHA-256 over the RFC 8785 (JCS) canonical form of
// the line without `hash`. Line 1 is a run header (seq 0) whose hash the first record's `prev`
// names. Checkpoints, signed with an Ed25519 key kept in the state dir, seal a prefix of the
// chain in the signed-note form transparency logs use (origin, size, head hash), so a chain
// rewritten without the key no longer matches the last checkpoint. docs/audit-log.md has the
// formats; `verifyAuditChain` is what `loopbox audit verify` and the run report call.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { ConfigError, LoopboxError } from '../common/errors.js';
import { stateDir } from '../common/paths.js';

export const AUDIT_FORMAT = 'loopbox-audit/1';
export const CHECKPOINTS_FILE = 'audit.checkpoints';
export const KEY_FILE = 'audit-key.pem';

// ---------------------------------------------------------------------------------------------
// RFC 8785 JSON Canonicalization Scheme

/**
 * The JCS form of a JSON value: object members sorted by their UTF-16 code units, no white
 * space, numbers as ECMAScript prints them, strings escaped as JSON.stringify does (which is
 * exactly RFC 8785 §3.2.2.2 for well-formed strings). Refuses what JCS refuses.
 */
export function canonicalize(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`JCS cannot represent ${value}`);
      return JSON.stringify(value);
    case 'string':
      // With the u flag a surrogate class matches only unpaired halves.
      if (/[\uD800-\uDFFF]/u.test(value)) throw new TypeError('JCS cannot represent a string with a lone surrogate');
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v: unknown) => canonicalize(v)).join(',')}]`;
      const obj = value as Record<string, unknown>;
      // Default sort compares UTF-16 code units, which is what RFC 8785 §3.2.3 asks for.
      const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
      return `{${keys.map((k) => `${canonicalize(k)}:${canonicalize(obj[k])}`).join(',')}}`;
    }
    default:
      throw new TypeError(`JCS cannot represent a ${typeof value}`);
  }
}

/** SHA-256 (hex) of the JCS form of `line` without its `hash` member. */
export function lineHash(line: Record<string, unknown>): string {
  const { hash: _ignored, ...rest } = line;
  return createHash('sha256').update(canonicalize(rest), 'utf8').digest('hex');
}

// ---------------------------------------------------------------------------------------------
// The signing key and signed notes (the format of golang.org/x/mod/sumdb/note, used by
// transparency-log checkpoints: c2sp.org/tlog-checkpoint and c2sp.org/signed-note)

export interface AuditKey {
  name: string;
  privateKey: KeyObject | undefined;
  publicKey: KeyObject;
  /** 4-byte key id: SHA-256(name || "\n" || 0x01 || public key)[0:4]. */
  keyId: Buffer;
  /** The verifier key, `<name>+<key id hex>+<base64(0x01 || public key)>`. */
  vkey: string;
}

export function auditKeyFile(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(stateDir(env), KEY_FILE);
}

function rawPublic(publicKey: KeyObject): Buffer {
  const der = publicKey.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32);
}

function keyFrom(name: string, publicKey: KeyObject, privateKey?: KeyObject): AuditKey {
  const raw = Buffer.concat([Buffer.from([0x01]), rawPublic(publicKey)]);
  const keyId = createHash('sha256').update(Buffer.concat([Buffer.from(`${name}\n`), raw])).digest().subarray(0, 4);
  return { name, privateKey, publicKey, keyId, vkey: `${name}+${keyId.toString('hex')}+${raw.toString('base64')}` };
}

function keyName(): string {
  return `loopbox-audit-${hostname().replace(/[^A-Za-z0-9._-]/g, '-')}`;
}

/**
 * The state dir's signing key, made on first use (mode 0600). It lives beside `runs/`, never
 * inside a folder that is mounted into a container (docs/security-model.md).
 */
export async function loadAuditKey(env: NodeJS.ProcessEnv = process.env, create = true): Promise<AuditKey> {
  const file = auditKeyFile(env);
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    if (!create) throw new LoopboxError(`No audit signing key at ${file}.`, { hint: 'It is made by the first run that writes an audit log; or pass --key with the public key.' });
    await mkdir(path.dirname(file), { recursive: true });
    const { privateKey } = generateKeyPairSync('ed25519');
    const text = `# ${keyName()}\n${privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()}`;
    try {
      await writeFile(file, text, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    pem = await readFile(file, 'utf8');
  }
  const mode = (await stat(file)).mode & 0o777;
  if (mode & 0o077) await chmod(file, 0o600);
  const name = /^# (\S+)/.exec(pem)?.[1] ?? keyName();
  const privateKey = createPrivateKey(pem.replace(/^#.*\n/, ''));
  return keyFrom(name, createPublicKey(privateKey), privateKey);
}

/**
 * A fresh signing key in the key file's format, and its verifier key: a swarm run's own key,
 * handed to the runner as a Swarm secret while the host keeps the verifier key.
 */
export function newAuditKey(name: string): { pem: string; vkey: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { pem: `# ${name}\n${privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()}`, vkey: keyFrom(name, publicKey).vkey };
}

/** A verifier key from `--key FILE`: the vkey line `loopbox audit key` prints, or a PEM public key. */
export function parseVerifierKey(text: string): AuditKey {
  const trimmed = text.trim();
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(trimmed);
  if (m) {
    const raw = Buffer.from(m[3]!, 'base64');
    if (raw.length !== 33 || raw[0] !== 0x01) throw new ConfigError('The verifier key is not an Ed25519 key (algorithm byte 0x01, 32 bytes).');
    const spki = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw.subarray(1)]);
    const key = keyFrom(m[1]!, createPublicKey({ key: spki, format: 'der', type: 'spki' }));
    if (key.keyId.toString('hex') !== m[2]) throw new ConfigError(`The verifier key's id ${m[2]} does not match its name and key (expected ${key.keyId.toString('hex')}).`);
    return key;
  }
  try {
    const pub = createPublicKey(trimmed.replace(/^#.*\n/, ''));
    const name = /^# (\S+)/.exec(trimmed)?.[1] ?? keyName();
    return keyFrom(name, pub);
  } catch (error) {
    throw new ConfigError('The key is neither a verifier key line (name+id+base64) nor a PEM Ed25519 key.', [], { cause: error, hint: 'Use the line `loopbox audit key` prints.' });
  }
}

export interface Checkpoint {
  origin: string;
  size: number;
  /** Hex SHA-256 of record `size` (of the header when size is 0). */
  head: string;
  time: string | null;
  /** The note's text part (what is signed) and its signatures: name, key id, signature. */
  text: string;
  signatures: { name: string; keyId: Buffer; signature: Buffer }[];
}

export function checkpointOrigin(runId: string): string {
  return `loopbox.audit/${runId}`;
}

/** A signed note: `<origin>\n<size>\n<base64 head>\ntime <iso>\n\n— <name> <base64(id || sig)>\n`. */
export function signCheckpoint(key: AuditKey, origin: string, size: number, headHex: string, time: string): string {
  if (!key.privateKey) throw new LoopboxError('Cannot sign a checkpoint with a public key.');
  const text = `${origin}\n${size}\n${Buffer.from(headHex, 'hex').toString('base64')}\ntime ${time}\n`;
  const signature = sign(null, Buffer.from(text, 'utf8'), key.privateKey);
  return `${text}\n\u2014 ${key.name} ${Buffer.concat([key.keyId, signature]).toString('base64')}\n`;
}

export function parseCheckpoint(note: string): Checkpoint {
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw new Error('no blank line between text and signatures');
  const text = note.slice(0, split + 1);
  const lines = text.split('\n');
  const size = lines[1] ?? '';
  if (!/^(0|[1-9]\d*)$/.test(size)) throw new Error(`size line ${JSON.stringify(size)} is not a decimal number`);
  const head = Buffer.from(lines[2] ?? '', 'base64');
  if (head.length !== 32) throw new Error('head hash line is not 32 bytes of base64');
  const time = lines.find((l) => l.startsWith('time '))?.slice(5) ?? null;
  const signatures = note
    .slice(split + 2)
    .split('\n')
    .filter((l) => l)
    .map((l) => {
      const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(l);
      if (!m) throw new Error(`signature line ${JSON.stringify(l)} is malformed`);
      const raw = Buffer.from(m[2]!, 'base64');
      return { name: m[1]!, keyId: raw.subarray(0, 4), signature: raw.subarray(4) };
    });
  return { origin: lines[0] ?? '', size: Number(size), head: head.toString('hex'), time, text, signatures };
}

/** Whether `checkpoint` carries a valid signature by `key`. */
export function checkpointSignedBy(checkpoint: Checkpoint, key: AuditKey): boolean {
  return checkpoint.signatures.some(
    (s) => s.name === key.name && s.keyId.equals(key.keyId) && s.signature.length === 64 && verify(null, Buffer.from(checkpoint.text, 'utf8'), key.publicKey, s.signature),
  );
}

// ---------------------------------------------------------------------------------------------
// Verification

export interface ChainBreak {
  /** 1-based line of `audit.jsonl` (or of `audit.checkpoints` when `file` says so). */
  line: number;
  file: string;
  seq: number | null;
  message: string;
}

export interface ChainVerification {
  ok: boolean;
  runId: string;
  /** Records after the header (the header is not counted). */
  records: number;
  /** Records covered by the last valid checkpoint, and those after it. */
  sealed: number;
  unsealed: number;
  checkpoints: number;
  /** The last valid checkpoint's time, if any. */
  sealedAt: string | null;
  firstBreak?: ChainBreak;
  key: string;
}

export interface VerifyOptions {
  /** Verifier key; default: the state dir's key. */
  key?: AuditKey;
  env?: NodeJS.ProcessEnv;
}

interface CheckpointLine {
  line: number;
  checkpoint?: Checkpoint;
  error?: string;
}

async function readCheckpoints(file: string): Promise<CheckpointLine[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  return text
    .split('\n')
    .map((l, i) => ({ l, line: i + 1 }))
    .filter(({ l }) => l.trim())
    .map(({ l, line }) => {
      try {
        const note = (JSON.parse(l) as { note?: unknown }).note;
        if (typeof note !== 'string') return { line, error: 'no "note" string' };
        return { line, checkpoint: parseCheckpoint(note) };
      } catch (error) {
        return { line, error: (error as Error).message };
      }
    });
}

/**
 * Recomputes every hash of `<runDir>/audit.jsonl`, checks the links and seq continuity, and
 * checks every checkpoint in `<runDir>/audit.checkpoints`: its signature by the key, and that
 * its head hash is the hash of the record at its size. Names the first break. Reads line by
 * line: memory does not grow with the log.
 */
export async function verifyAuditChain(runDirPath: string, options: VerifyOptions = {}): Promise<ChainVerification> {
  const runId = path.basename(runDirPath);
  const key = options.key ?? (await loadAuditKey(options.env, false));
  const auditPath = path.join(runDirPath, 'audit.jsonl');
  const checkpointPath = path.join(runDirPath, CHECKPOINTS_FILE);
  const checkpoints = await readCheckpoints(checkpointPath);
  const wanted = new Set(checkpoints.flatMap((c) => (c.checkpoint ? [c.checkpoint.size] : [])));
  const headAt = new Map<number, string>();
  let firstBreak: ChainBreak | undefined;
  const brk = (line: number, seq: number | null, message: string, file = 'audit.jsonl'): void => {
    firstBreak ??= { line, seq, file, message: `${file} line ${line}${seq !== null ? ` (seq ${seq})` : ''}: ${message}` };
  };
  let records = 0;
  let prevHash: string | null = null;
  let expectSeq = 0;
  let lineNo = 0;
  let endsWithNewline = true;
  if (existsSync(auditPath)) {
    const size = (await stat(auditPath)).size;
    if (size > 0) {
      const fh = await open(auditPath, 'r');
      const last = Buffer.alloc(1);
      await fh.read(last, 0, 1, size - 1);
      await fh.close();
      endsWithNewline = last[0] === 0x0a;
    }
    const lines = createInterface({ input: createReadStream(auditPath, { encoding: 'utf8' }), crlfDelay: Infinity });
    for await (const text of lines) {
      lineNo += 1;
      if (firstBreak) {
        if (text.trim()) records += 1;
        continue;
      }
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
        if (typeof line !== 'object' || line === null || Array.isArray(line)) throw new Error('not an object');
      } catch {
        brk(lineNo, null, `not a JSON object${text.length < 300 ? `: ${JSON.stringify(text)}` : ''} (changed or truncated)`);
        records += 1;
        continue;
      }
      const seq = typeof line.seq === 'number' ? line.seq : null;
      if (lineNo === 1) {
        if (line.kind !== 'header' || line.format !== AUDIT_FORMAT) brk(1, seq, `the first line is not a ${AUDIT_FORMAT} run header`);
        else if (line.runId !== runId) brk(1, seq, `the header names run ${String(line.runId)}, not ${runId}`);
      } else {
        records += 1;
      }
      if (firstBreak) continue;
      if (seq !== expectSeq) {
        brk(lineNo, seq, `seq ${String(line.seq)} where ${expectSeq} was expected: a record was deleted, inserted or moved`);
        continue;
      }
      if ((line.prev ?? null) !== prevHash) {
        brk(lineNo, seq, `prev does not match the hash of ${seq === 0 ? 'nothing (a header has prev null)' : `seq ${seq - 1}`}: the chain is cut here`);
        continue;
      }
      const hash = lineHash(line);
      if (line.hash !== hash) {
        brk(lineNo, seq, `hash does not match the record's content: the record was changed`);
        continue;
      }
      if (wanted.has(seq)) headAt.set(seq, hash);
      prevHash = hash;
      expectSeq += 1;
    }
    if (!firstBreak && !endsWithNewline) brk(lineNo, expectSeq - 1, 'the last line has no newline: the file was truncated');
  } else if (checkpoints.length) {
    brk(0, null, 'the file is missing, but checkpoints exist');
  }
  if (!firstBreak && lineNo === 0 && checkpoints.length) brk(0, null, 'the file is empty, but checkpoints exist');
  // The chain itself is consistent up to `expectSeq - 1`; now the seals.
  let sealed = 0;
  let sealedAt: string | null = null;
  const origin = checkpointOrigin(runId);
  for (const c of checkpoints) {
    const where = (msg: string): void => brk(c.line, c.checkpoint?.size ?? null, msg, CHECKPOINTS_FILE);
    if (!c.checkpoint) {
      where(`not a checkpoint: ${c.error ?? 'unreadable'}`);
      continue;
    }
    const cp = c.checkpoint;
    if (!checkpointSignedBy(cp, key)) {
      where(`no valid signature by ${key.name} (${key.keyId.toString('hex')}): the checkpoint was forged or the key is not this log's`);
      continue;
    }
    if (cp.origin !== origin) {
      where(`signed for ${cp.origin}, not ${origin}: a checkpoint of another run`);
      continue;
    }
    if (cp.size < sealed) where(`size ${cp.size} is smaller than an earlier checkpoint's ${sealed}`);
    const head = headAt.get(cp.size);
    if (head === undefined) {
      if (!firstBreak) where(`seals ${cp.size} records, but the log holds ${records}: records were removed (truncated)`);
      continue;
    }
    if (head !== cp.head) {
      where(`head hash differs from record seq ${cp.size}: the chain up to it was rewritten`);
      continue;
    }
    if (cp.size >= sealed) {
      sealed = cp.size;
      sealedAt = cp.time;
    }
  }
  return {
    ok: firstBreak === undefined,
    runId,
    records,
    sealed,
    unsealed: Math.max(0, records - sealed),
    checkpoints: checkpoints.length,
    sealedAt,
    ...(firstBreak ? { firstBreak } : {}),
    key: key.vkey,
  };
}

/** One line for the terminal. */
export function formatVerification(v: ChainVerification): string {
  const head = v.ok ? `${v.runId}: ok` : `${v.runId}: BROKEN`;
  const parts = [`${v.records} records`, `${v.sealed} sealed by ${v.checkpoints} checkpoint(s)${v.sealedAt ? ` (last ${v.sealedAt})` : ''}`];
  parts.push(v.unsealed ? `${v.unsealed} unsealed (after the last checkpoint)` : 'none unsealed');
  return `${head}: ${parts.join(', ')}${v.firstBreak ? `\n  first break: ${v.firstBreak.message}` : ''}`;
}
