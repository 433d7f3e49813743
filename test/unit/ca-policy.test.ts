// One CA policy for every command that builds images: config + flags + NODE_EXTRA_CA_CERTS (as
// Node and npm use it); the CA is not part of an image's identity.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { caCertFiles } from '../../src/images/builder.js';

describe('CA policy for image builds', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'lbx-ca-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('adds the file NODE_EXTRA_CA_CERTS names to the configured and given files, once', async () => {
    const proxy = path.join(dir, 'proxy.pem');
    const corp = path.join(dir, 'corp.pem');
    await writeFile(proxy, '-----BEGIN CERTIFICATE-----\n');
    await writeFile(corp, '-----BEGIN CERTIFICATE-----\n');
    expect(caCertFiles([corp], { NODE_EXTRA_CA_CERTS: proxy })).toEqual([corp, proxy]);
    expect(caCertFiles([proxy, corp], { NODE_EXTRA_CA_CERTS: proxy })).toEqual([proxy, corp]);
    expect(caCertFiles([], {})).toEqual([]);
    // SSL_CERT_FILE is not what Node or npm read for extra roots.
    expect(caCertFiles([], { SSL_CERT_FILE: proxy })).toEqual([]);
  });

  it('ignores a NODE_EXTRA_CA_CERTS file that does not exist, with a warning, as Node does', () => {
    const warnings: string[] = [];
    const missing = path.join(dir, 'missing.pem');
    expect(caCertFiles([], { NODE_EXTRA_CA_CERTS: missing }, (w) => warnings.push(w))).toEqual([]);
    expect(warnings).toEqual([`warning: ignoring NODE_EXTRA_CA_CERTS=${missing}: no such file`]);
  });
});
