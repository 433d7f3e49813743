// Image builds are cached by an inputs hash, the extra CA never reaches a final image,
// and doctor reports the engine and the images.
import { afterAll, describe, expect, it } from 'vitest';
import { IMAGE_NAMES, imageRef } from '../../src/images/catalog.js';
import { cli, docker } from './helpers.js';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

describe('images and doctor (real Docker)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('skips every image whose inputs are unchanged', async () => {
    const res = await cli(['images', 'build', '--ca-cert', process.env.NODE_EXTRA_CA_CERTS ?? '/etc/ssl/certs/ca-certificates.crt']);
    expect(res.exitCode, res.all).toBe(0);
    for (const name of ['sentry', 'agent', 'llama-cpu']) expect(res.stdout).toMatch(new RegExp(`loopbox/${name}:\\S+\\s+unchanged`));
  });

  // Issue 12: after the demo (host CA), `images build` saw changed inputs, rebuilt the agent
  // image without the CA and failed behind the proxy. The CA is not part of an image's identity.
  it('after a build with the host CA, a build with no CA or another CA sees every image unchanged', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ca-'));
    dirs.push(dir);
    const bundle = await readFile('/etc/ssl/certs/ca-certificates.crt', 'utf8');
    const first = bundle.slice(0, bundle.indexOf('-----END CERTIFICATE-----') + '-----END CERTIFICATE-----'.length);
    await writeFile(path.join(dir, 'other.pem'), `${first}\n`);
    for (const args of [[], ['--ca-cert', path.join(dir, 'other.pem')]]) {
      const res = await cli(['images', 'build', ...args], { env: { NODE_EXTRA_CA_CERTS: '' } });
      expect(res.exitCode, res.all).toBe(0);
      for (const name of ['sentry', 'agent', 'llama-cpu']) expect(res.stdout, res.all).toMatch(new RegExp(`loopbox/${name}:\\S+\\s+unchanged`));
    }
  });

  // Behind a TLS-intercepting proxy (this machine), `images build` with no CA flag works: it
  // honours NODE_EXTRA_CA_CERTS as npm does. --force runs the build (the fetch stage may come
  // from the build cache only when its CA file is the same as before).
  it('rebuilds the agent image with no CA flag, trusting NODE_EXTRA_CA_CERTS like npm', async () => {
    const res = await cli(['images', 'build', '--only', 'agent', '--force'], { timeoutMs: 600_000 });
    expect(res.exitCode, res.all).toBe(0);
    expect(res.stdout).toMatch(/loopbox\/agent:\S+\s+built/);
  }, 600_000);

  it('leaves the extra CA out of every layer of the final agent image', async () => {
    const history = await docker.imageHistory(imageRef('agent'));
    expect(history.length).toBeGreaterThan(3);
    expect(history.some((createdBy) => createdBy.includes('loopbox-extra-ca'))).toBe(false);
    const res = await cli(['sandbox', 'run', '--', 'bash', '-c', 'ls /tmp/loopbox-extra-ca.pem /opt/npm-global 2>&1; command -v npm || echo no-npm']);
    expect(res.stdout).toContain('No such file');
    expect(res.stdout).toContain('no-npm');
  });

  it('refuses a CA file that holds no certificate, with exit code 2 and nothing built', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-ca-'));
    dirs.push(dir);
    await writeFile(path.join(dir, 'bad.pem'), 'not a certificate');
    const res = await cli(['images', 'build', '--ca-cert', path.join(dir, 'bad.pem')]);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/holds no PEM certificate/);
  });

  it('doctor reports the engine, the NVIDIA runtime and the images', async () => {
    const res = await cli(['doctor', '--json']);
    expect(res.exitCode, res.all).toBe(0);
    const report = JSON.parse(res.stdout) as { engine: { serverVersion: string; apiVersion: string; storageDriver: string }; nvidiaRuntime: boolean; images: Array<{ ref: string; present: boolean }> };
    expect(report.engine.serverVersion).toMatch(/\d+\.\d+/);
    expect(report.engine.apiVersion).toMatch(/^1\.\d+$/);
    expect(report.engine.storageDriver).not.toBe('');
    expect(typeof report.nvidiaRuntime).toBe('boolean');
    // Every project image, the Swarm runner included (the test set-up builds them all).
    expect(report.images.map((i) => i.present)).toEqual(IMAGE_NAMES.map(() => true));
    const text = await cli(['doctor']);
    expect(text.stdout).toContain(`ok      ${imageRef('sentry')}`);
  });

  it('a dead daemon gives a clear error and a hint, not a stack trace', async () => {
    const res = await cli(['doctor'], { env: { DOCKER_HOST: 'unix:///nonexistent/docker.sock' } });
    expect(res.exitCode).toBe(1);
    expect(res.stderr).toMatch(/Cannot reach the Docker engine/);
    expect(res.stderr).toMatch(/hint: Start Docker/);
  });
});
