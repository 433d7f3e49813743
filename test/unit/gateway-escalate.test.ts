// The sentry's gateway in escalated mode (images/sentry/gateway.py, model.escalate), run with
// the machine's python3 against a real TLS server on loopback with a certificate made here:
// TLS upstream with the CA store (SSL_CERT_FILE stands for the sentry's system store) and the
// host name checked, the agent's Authorization replaced by the gateway's key, the path mapped,
// the model named, and the escalation budget. The sentry, firewall and key delivery are tested
// in test/docker/escalate.test.ts.
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { connect, createServer as createNetServer } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const GATEWAY = path.resolve(import.meta.dirname, '..', '..', 'images', 'sentry', 'gateway.py');
const KEY = 'sk-escalate-0123456789abcdef';

interface Seen {
  url: string;
  authorization: string | undefined;
  host: string | undefined;
  body: Record<string, unknown>;
}

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function selfSigned(dir: string, name: string, cn: string): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`]);
  return { cert, key };
}

describe('gateway.py escalated (python3, a TLS server on loopback)', () => {
  let dir: string;
  let upstream: Server;
  let upstreamPort: number;
  let otherCa: string;
  const seen: Seen[] = [];
  const gateways: ChildProcess[] = [];

  async function startGateway(caFile: string, extra: Record<string, string> = {}): Promise<{ port: number; records: string }> {
    const port = await freePort();
    const records = path.join(dir, `gw-${port}.jsonl`);
    const child = spawn('python3', ['-I', GATEWAY], {
      env: {
        PATH: process.env.PATH,
        LOOPBOX_GW_PORT: String(port),
        LOOPBOX_GW_UPSTREAM: '127.0.0.1:9',
        LOOPBOX_GW_RECORDS: records,
        LOOPBOX_GW_ESCALATE: `127.0.0.1:${upstreamPort}`,
        LOOPBOX_GW_ESCALATE_HOST: `localhost:${upstreamPort}`,
        LOOPBOX_GW_ESCALATE_TLS: '1',
        LOOPBOX_GW_ESCALATE_BASE: '/api/v1',
        LOOPBOX_GW_ESCALATE_MODEL: 'big-model',
        LOOPBOX_GW_ESCALATE_KEY_FILE: path.join(dir, 'key'),
        SSL_CERT_FILE: caFile,
        ...extra,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    gateways.push(child);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('loopbox-gateway: listening')) resolve();
      });
      child.stderr.on('data', (c: Buffer) => (out += c.toString()));
      child.on('exit', (code) => reject(new Error(`gateway exited ${code}: ${out}`)));
    });
    expect(out).toContain('(big-model, key)');
    expect(out).not.toContain(KEY);
    return { port, records };
  }

  const ask = (port: number, maxTokens = 8): Promise<Response> =>
    fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer the-agents-own-guess' },
      body: JSON.stringify({ model: 'local', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens }),
    });

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'lbx-gwesc-'));
    const server = await selfSigned(dir, 'server', 'localhost');
    otherCa = (await selfSigned(dir, 'other', 'other.invalid')).cert;
    await writeFile(path.join(dir, 'key'), `${KEY}\n`);
    await chmod(path.join(dir, 'key'), 0o400);
    upstream = createHttpsServer({ cert: await readFile(server.cert), key: await readFile(server.key) }, (req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        seen.push({ url: req.url ?? '', authorization: req.headers.authorization, host: req.headers.host, body: JSON.parse(body || '{}') as Record<string, unknown> });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ choices: [{ message: { content: 'ok' } }], usage: { prompt_tokens: 11, completion_tokens: 4 } }));
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    upstreamPort = (upstream.address() as { port: number }).port;
  });

  afterAll(async () => {
    for (const g of gateways) g.kill();
    await new Promise((resolve) => upstream?.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  it('speaks TLS upstream, replaces the agent\'s key with its own, maps the path and names the model; records the request as escalated', async () => {
    const gw = await startGateway(path.join(dir, 'server.crt'));
    const res = await ask(gw.port);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(11);
    expect(seen.at(-1)).toMatchObject({ url: '/api/v1/chat/completions', authorization: `Bearer ${KEY}`, host: `localhost:${upstreamPort}`, body: { model: 'big-model', max_tokens: 8 } });
    const line = JSON.parse((await readFile(gw.records, 'utf8')).trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(line).toMatchObject({ status: 200, escalated: true, model: 'big-model', upstream: `127.0.0.1:${upstreamPort}`, promptTokens: 11, completionTokens: 4 });
    expect(await readFile(gw.records, 'utf8')).not.toContain(KEY);
  });

  it('caps escalated tokens at the escalation budget, then answers 429 escalate-budget', async () => {
    const gw = await startGateway(path.join(dir, 'server.crt'), { LOOPBOX_GW_ESCALATE_BUDGET: '20' });
    expect((await ask(gw.port, 50)).status).toBe(200);
    expect(seen.at(-1)!.body.max_tokens).toBe(20);
    // 15 used: the next one may generate 5 at most.
    expect((await ask(gw.port, 50)).status).toBe(200);
    expect(seen.at(-1)!.body.max_tokens).toBe(5);
    const refused = await ask(gw.port);
    expect(refused.status).toBe(429);
    const lines = (await readFile(gw.records, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.at(-1)).toMatchObject({ status: 429, denied: 'escalate-budget' });
  });

  it('attack: a bare LF or CR in the request head (a header or a second request smuggled past the key the gateway adds) is refused with 400, nothing sent upstream', async () => {
    // A raw TLS upstream that keeps every byte: what a lenient server (RFC 9112 lets it take a lone
    // LF as a line end) would read as two requests, the second one carrying the gateway's key.
    const raw: Buffer[] = [];
    const server = createTlsServer({ cert: await readFile(path.join(dir, 'server.crt')), key: await readFile(path.join(dir, 'server.key')) }, (sock) => {
      sock.on('error', () => undefined);
      sock.on('data', (c: Buffer) => {
        raw.push(c);
        if (Buffer.concat(raw).includes('\r\n\r\n')) sock.end('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const gw = await startGateway(path.join(dir, 'server.crt'), { LOOPBOX_GW_ESCALATE: `127.0.0.1:${port}`, LOOPBOX_GW_ESCALATE_HOST: `localhost:${port}` });
      const send = (head: string, body: string): Promise<string> =>
        new Promise((resolve, reject) => {
          const sock = connect(gw.port, '127.0.0.1', () => sock.write(`${head}\r\nContent-Length: ${body.length}\r\n\r\n${body}`));
          let got = '';
          sock.on('data', (c: Buffer) => (got += c.toString('latin1')));
          sock.on('end', () => resolve(got));
          sock.on('error', reject);
        });
      const body = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
      const start = 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json';
      for (const smuggled of ['X-A: b\nX-Smuggled: 1', 'X-A: b\rX-Smuggled: 1', 'X-A: b\n\nPOST /v1/files HTTP/1.1\nX-Eat: ']) {
        const reply = await send(`${start}\r\n${smuggled}`, body);
        expect(reply, JSON.stringify(smuggled)).toMatch(/^HTTP\/1\.[01] 400 /);
      }
      expect(Buffer.concat(raw).toString('latin1')).toBe('');
      // A clean request still goes through to the same upstream.
      expect(await send(start, body)).toMatch(/^HTTP\/1\.1 200 /);
      expect(Buffer.concat(raw).toString('latin1')).toContain(`Authorization: Bearer ${KEY}`);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('refuses an endpoint whose certificate the CA store does not trust: 502, nothing sent', async () => {
    const before = seen.length;
    const gw = await startGateway(otherCa);
    const res = await ask(gw.port);
    expect(res.status).toBe(502);
    expect(await res.text()).toMatch(/CERTIFICATE_VERIFY_FAILED|certificate verify failed/);
    expect(seen.length).toBe(before);
  });
});
