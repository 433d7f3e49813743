// model pull against a real HTTP server on loopback (a server the test makes; no outside host).
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullModel, resolvePullUrl } from '../../src/model/pull.js';

const gguf = Buffer.concat([Buffer.from('GGUF'), randomBytes(200_000)]);
let server: http.Server;
let base: string;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'lbx-pull-'));
  server = http.createServer((req, res) => {
    if (req.url === '/m/tiny.gguf') {
      res.writeHead(200, { 'content-length': gguf.length });
      res.end(gguf);
    } else if (req.url === '/m/page.gguf') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>login</html>');
    } else if (req.url === '/m/cut.gguf') {
      res.writeHead(200, { 'content-length': gguf.length });
      res.write(gguf.subarray(0, 1000));
      res.destroy();
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

describe('model pull', () => {
  it('downloads a GGUF, checks it, reports progress and its SHA-256', async () => {
    const seen: number[] = [];
    const sha = createHash('sha256').update(gguf).digest('hex');
    const res = await pullModel({ source: `${base}/m/tiny.gguf`, dir, sha256: sha, onProgress: (d) => seen.push(d) });
    expect(res).toMatchObject({ file: path.join(dir, 'tiny.gguf'), bytes: gguf.length, sha256: sha });
    expect((await readFile(res.file)).equals(gguf)).toBe(true);
    expect(seen.at(-1)).toBe(gguf.length);
    await expect(pullModel({ source: `${base}/m/tiny.gguf`, dir })).rejects.toThrow(/already exists/);
  });

  it('refuses what is not a GGUF, a cut download, a wrong checksum and a 404, leaving no file behind', async () => {
    await expect(pullModel({ source: `${base}/m/page.gguf`, dir })).rejects.toThrow(/not a GGUF file/);
    await expect(pullModel({ source: `${base}/m/cut.gguf`, dir })).rejects.toThrow();
    await expect(pullModel({ source: `${base}/m/tiny.gguf`, dir, force: true, sha256: '00' })).rejects.toThrow(/SHA-256 mismatch/);
    await expect(pullModel({ source: `${base}/m/none.gguf`, dir })).rejects.toThrow(/HTTP 404/);
    expect((await readdir(dir)).filter((f) => f.endsWith('.part'))).toEqual([]);
    expect(existsSync(path.join(dir, 'page.gguf'))).toBe(false);
  });

  it('turns hf: shorthands into Hugging Face download URLs and rejects other schemes', () => {
    expect(resolvePullUrl('hf:org/repo/sub/model-Q4_K_M.gguf').href).toBe('https://huggingface.co/org/repo/resolve/main/sub/model-Q4_K_M.gguf');
    expect(() => resolvePullUrl('file:///etc/passwd')).toThrow(/Only http/);
    expect(() => resolvePullUrl('not a url')).toThrow(/neither a URL/);
  });
});
