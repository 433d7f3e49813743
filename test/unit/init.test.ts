import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VERIFY_PROFILES, initProject } from '../../src/config/init.js';
import { loadConfig } from '../../src/config/load.js';
import { REPORT_PRESETS } from '../../src/verify/presets.js';
import type { DockerClient } from '../../src/docker/client.js';
import { buildImages } from '../../src/images/builder.js';
import { TOOLCHAINS, imageRef } from '../../src/images/catalog.js';

describe('loopbox init', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  it('writes a valid commented config, AGENTS.md and a task template; never overwrites without force', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-init-'));
    dirs.push(dir);
    const res = await initProject(dir);
    expect(res.written).toEqual(['loopbox.yaml', 'AGENTS.md', path.join('tasks', 'example.md')]);
    const { config } = await loadConfig({ dir });
    // Test accounting is on: the command writes the node-test preset's report, and the config names it.
    expect(config.verify.command).toEqual(REPORT_PRESETS['node-test'].command);
    expect(config.verify.report).toMatchObject({ format: 'tap', path: REPORT_PRESETS['node-test'].path });
    expect(await readFile(path.join(dir, 'tasks', 'example.md'), 'utf8')).toMatch(/## Goal[\s\S]*## How to check[\s\S]*## Done when/);
    await writeFile(path.join(dir, 'AGENTS.md'), 'mine');
    await expect(initProject(dir)).rejects.toThrow(/Not overwriting existing file\(s\): loopbox.yaml, AGENTS.md/);
    expect(await readFile(path.join(dir, 'AGENTS.md'), 'utf8')).toBe('mine');
    await initProject(dir, { force: true });
    expect(await readFile(path.join(dir, 'AGENTS.md'), 'utf8')).not.toBe('mine');
  });
});

describe('loopbox init: the verify command and image for the test setup found', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });
  async function project(files: Record<string, string>): Promise<string> {
    const dir = await mkdtemp(path.join(tmpdir(), 'lbx-init-tc-'));
    dirs.push(dir);
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
    return dir;
  }

  it.each([
    ['node', { 'package.json': JSON.stringify({ scripts: { test: 'node --test' } }) }, ['npm', 'test'], 'package.json'],
    ['python', { 'pytest.ini': '[pytest]\n' }, [...REPORT_PRESETS.pytest.command, '-q'], 'pytest.ini'],
    ['python', { 'pyproject.toml': '[project]\nname = "x"\n' }, [...REPORT_PRESETS.pytest.command, '-q'], 'pyproject.toml'],
    ['go', { 'go.mod': 'module example.com/x\n\ngo 1.19\n' }, ['go', 'test', './...'], 'go.mod'],
    ['rust', { 'Cargo.toml': '[package]\nname = "x"\nversion = "0.1.0"\n' }, ['cargo', 'test', '--offline'], 'Cargo.toml'],
  ] as const)('%s project (%s): proposes its command, its verify image, and protects what the command reads', async (toolchain, files, command, marker) => {
    const dir = await project(files);
    const res = await initProject(dir);
    expect(res.detected).toMatchObject({ toolchain });
    expect(res.detected?.evidence).toContain(marker);
    const { config } = await loadConfig({ dir });
    expect(config.verify.command).toEqual(command);
    expect(config.verify.image).toBe(imageRef(`verify-${toolchain}`));
    expect(config.verify.image).toMatch(new RegExp(`^loopbox/verify-${toolchain}:`));
    expect(config.protectedPaths).toEqual(VERIFY_PROFILES[toolchain].protectedPaths);
    // Test accounting where the runner can write a report loopbox reads (pytest); else exit code only.
    const preset = VERIFY_PROFILES[toolchain].report;
    expect(config.verify.report).toEqual(preset ? { format: REPORT_PRESETS[preset].format, path: REPORT_PRESETS[preset].path, preset } : undefined);
    expect(await readFile(path.join(dir, 'loopbox.yaml'), 'utf8')).toContain(`loopbox images build --toolchain ${toolchain}`);
    expect(await readFile(path.join(dir, 'AGENTS.md'), 'utf8')).toContain(`\`${command.join(' ')}\``);
  });

  it('a package.json without a test script, or with npm\'s placeholder, is not a test setup', async () => {
    for (const pkg of [{ name: 'x' }, { scripts: { test: 'echo "Error: no test specified" && exit 1' } }]) {
      const dir = await project({ 'package.json': JSON.stringify(pkg) });
      const res = await initProject(dir);
      expect(res.detected).toBeUndefined();
      const { config } = await loadConfig({ dir });
      expect(config.verify.command).toEqual(REPORT_PRESETS['node-test'].command);
      expect(config.verify.report).toMatchObject({ format: 'tap' });
      expect(config.verify.image).toBeUndefined();
    }
  });

  it('with several setups uses the first, lists the others, and --toolchain picks another', async () => {
    const files = { 'package.json': JSON.stringify({ scripts: { test: 'jest' } }), 'pytest.ini': '', 'go.mod': 'module x\n' };
    const dir = await project(files);
    const res = await initProject(dir);
    expect(res.detected?.toolchain).toBe('node');
    expect(res.found.map((f) => f.toolchain)).toEqual(['node', 'python', 'go']);
    const other = await project(files);
    await initProject(other, { toolchain: 'go' });
    expect((await loadConfig({ dir: other })).config.verify.command).toEqual(['go', 'test', './...']);
  });
});

describe('toolchain image recipes (images/verify-<toolchain>/Dockerfile)', () => {
  it.each(TOOLCHAINS)('%s: built on the agent image with Debian packages, runs as uid 1000', async (toolchain) => {
    const text = await readFile(path.join(import.meta.dirname, '..', '..', 'images', `verify-${toolchain}`, 'Dockerfile'), 'utf8');
    expect(text).toMatch(/^FROM \$\{BASE_IMAGE\}$/m);
    expect(text).toMatch(/apt-get install -y --no-install-recommends [a-z0-9 -]+/);
    expect(text).not.toMatch(/curl|wget|pip install|npm install|go install|cargo install|rustup/);
    expect(text.trim().split('\n').at(-1)).toBe('USER 1000:1000');
    // The command init proposes is the one the image checks at build time.
    const tool = { node: 'npm --version', python: 'python3 -m pytest --version', go: 'go version', rust: 'cargo --version' }[toolchain];
    expect(text).toContain(tool);
  });

  it('buildImages builds the agent image first, then each toolchain image FROM that agent image', async () => {
    const built: Array<{ tag: string; buildArgs: Record<string, string> | undefined }> = [];
    const images = new Map<string, { id: string; labels: Record<string, string> }>([['debian:bookworm-slim', { id: 'sha256:deb', labels: {} }]]);
    const fake = {
      findImage: (ref: string) => Promise.resolve(images.get(ref)),
      build: async (context: AsyncIterable<Buffer>, options: { tag: string; labels: Record<string, string>; buildArgs?: Record<string, string> }) => {
        let bytes = 0;
        for await (const chunk of context) bytes += chunk.length; // read the context like the engine does
        expect(bytes).toBeGreaterThan(0);
        built.push({ tag: options.tag, buildArgs: options.buildArgs });
        images.set(options.tag, { id: `sha256:${built.length}`, labels: options.labels });
      },
    } as unknown as DockerClient;
    const res = await buildImages(fake, { only: ['sentry'], toolchains: ['go', 'rust'], env: {} });
    expect(res.map((r) => r.name)).toEqual(['agent', 'sentry', 'verify-go', 'verify-rust']);
    expect(built.map((b) => b.tag)).toEqual([imageRef('agent'), imageRef('sentry'), imageRef('verify-go'), imageRef('verify-rust')]);
    expect(built[2]?.buildArgs).toEqual({ BASE_IMAGE: imageRef('agent') });
    // Unchanged inputs: nothing is built again.
    const again = await buildImages(fake, { only: ['agent'], toolchains: ['go'], env: {} });
    expect(again.map((r) => r.status)).toEqual(['unchanged', 'unchanged']);
  });
});
