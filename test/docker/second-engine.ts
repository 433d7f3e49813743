// A second, private Docker engine for tests that must hurt an engine (kill it, restart it) or
// need a second node, without touching the shared one. It runs in a network namespace of its
// own (`ip netns add lbx-e2e-<pid>-<n>`, entered with nsenter), with its own data root, exec root, pid file, socket
// and containerd, and reaches nothing outside that namespace: containers on it have no route
// off the host. Images come from the shared engine by `docker save | docker load`.
//
//   const why = await secondEngineUnavailable();      // a reason to skip, or undefined
//   const engine = await startSecondEngine();         // listening; engine.host is a DOCKER_HOST
//   await engine.loadImages(['loopbox/agent:0.1.0']);
//   await engine.kill();                              // SIGKILL dockerd, as a crash would
//   await engine.start();                             // the same engine again, same data
//   await engine.cleanup();                           // always: daemon, namespace, dirs
//
// cleanup() is idempotent and never throws; reapStaleEngines() removes the namespaces and
// folders of engines whose test process died.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

const PREFIX = 'lbx-e2e-';
const TMP_PREFIX = `/tmp/${PREFIX}`;
let engines = 0;

export interface SecondEngine {
  /** The namespace, e.g. lbx-e2e-1234-1; also the name of its folders. */
  name: string;
  /** `unix:///run/lbx-e2e-…/docker.sock`: pass it as DOCKER_HOST. */
  host: string;
  socket: string;
  /** data-root, exec-root, pid file and the daemon's log live here. */
  dir: string;
  /** The current dockerd's pid (undefined while it is down). */
  pid(): number | undefined;
  /** Starts dockerd (again) and waits until it answers; the data root is kept between starts. */
  start(): Promise<void>;
  /**
   * SIGKILL to dockerd and to the containerd it started, as a crash of the engine would; the
   * containers' shims live on, as they do then. Resolves once both are gone. (dockerd alone
   * killed leaves its containerd holding the state, and a new dockerd cannot start its own.)
   */
  kill(): Promise<void>;
  /** `docker save <images> | DOCKER_HOST=<this> docker load`. */
  loadImages(images: string[]): Promise<void>;
  /** `docker …` against this engine. */
  docker(args: string[], timeoutMs?: number): Promise<string>;
  /** The daemon's log so far (for assertion messages). */
  log(): Promise<string>;
  /** Stops everything and removes the namespace and the folders. Idempotent, never throws. */
  cleanup(): Promise<void>;
}

/** Why a second engine cannot run here, or undefined when it can. */
export async function secondEngineUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'a second Docker engine needs root (ip netns, dockerd)';
  for (const bin of ['ip', 'nsenter', 'dockerd', 'docker']) {
    const found = await execa('sh', ['-c', `command -v ${bin}`], { reject: false });
    if (found.exitCode !== 0) return `${bin} is not installed`;
  }
  const probe = `${PREFIX}probe-${process.pid}`;
  const add = await execa('ip', ['netns', 'add', probe], { reject: false });
  if (add.exitCode !== 0) return `ip netns is unavailable here: ${add.stderr.trim() || `exit ${add.exitCode}`}`;
  await execa('ip', ['netns', 'delete', probe], { reject: false });
  return undefined;
}

export async function startSecondEngine(options: { waitMs?: number } = {}): Promise<SecondEngine> {
  await reapStaleEngines();
  const name = `${PREFIX}${process.pid}-${++engines}`;
  const dir = await mkdtemp(`${TMP_PREFIX}${process.pid}-`);
  const runDir = `/run/${name}`;
  const socket = path.join(runDir, 'docker.sock');
  const host = `unix://${socket}`;
  const waitMs = options.waitMs ?? 60_000;
  let child: ChildProcess | undefined;
  let cleaned = false;

  const env = { ...process.env, DOCKER_HOST: host };
  const dockerCli = async (args: string[], timeoutMs = 120_000): Promise<string> => (await execa('docker', args, { env, timeout: timeoutMs })).stdout;

  async function start(): Promise<void> {
    if (child && child.exitCode === null && child.signalCode === null) return;
    const out = await open(path.join(dir, 'dockerd.log'), 'a');
    // nsenter, not `ip netns exec`: that mounts a fresh /sys, which hides the cgroup
    // hierarchies dockerd needs. nsenter execs dockerd, so the child's pid is the daemon's. Its
    // own config file (empty) keeps the host's /etc/docker/daemon.json out.
    child = spawn(
      'nsenter',
      [
        `--net=/run/netns/${name}`,
        'dockerd',
        '--host', host,
        '--data-root', path.join(dir, 'data'),
        '--exec-root', path.join(dir, 'exec'),
        '--pidfile', path.join(dir, 'docker.pid'),
        '--config-file', path.join(dir, 'daemon.json'),
        '--bridge', 'none',
        '--log-level', 'warn',
      ],
      { stdio: ['ignore', out.fd, out.fd], detached: true },
    );
    child.unref();
    await out.close();
    const deadline = Date.now() + waitMs;
    for (;;) {
      const ok = await execa('docker', ['info', '--format', '{{.ServerVersion}}'], { env, reject: false, timeout: 5_000 });
      if (ok.exitCode === 0) return;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the second dockerd (${name}) exited at start:\n${await log()}`);
      if (Date.now() > deadline) throw new Error(`the second dockerd (${name}) did not answer within ${waitMs} ms:\n${await log()}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  async function kill(): Promise<void> {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const containerd = Number((await readFile(path.join(dir, 'exec', 'containerd', 'containerd.pid'), 'utf8').catch(() => '')).trim());
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGKILL');
    await gone;
    if (containerd > 1 && (await isOurs(containerd, dir))) {
      try {
        process.kill(containerd, 'SIGKILL');
      } catch {
        // already gone
      }
      for (let i = 0; i < 50 && existsSync(`/proc/${containerd}`) && !(await isZombie(containerd)); i++) await new Promise((r) => setTimeout(r, 100));
    }
    // A dead containerd's pid file makes the next dockerd wait for it where the process is
    // left a zombie (an init that does not reap): as after a reboot, it goes.
    await rm(path.join(dir, 'exec', 'containerd', 'containerd.pid'), { force: true });
  }

  async function log(): Promise<string> {
    return (await readFile(path.join(dir, 'dockerd.log'), 'utf8').catch(() => '')).slice(-4000);
  }

  async function cleanup(): Promise<void> {
    if (cleaned) return;
    cleaned = true;
    // A clean stop first (it stops its containers and unmounts), then whatever is left.
    const c = child;
    if (c && c.exitCode === null && c.signalCode === null) {
      const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 15_000))]);
    }
    await removeEngine(name, dir);
  }

  await mkdir(runDir, { recursive: true, mode: 0o700 });
  await writeFile(path.join(dir, 'daemon.json'), '{}\n');
  await writeFile(path.join(dir, 'owner'), `${process.pid}\n`);
  try {
    await execa('ip', ['netns', 'add', name]);
    await execa('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    await start();
  } catch (error) {
    await cleanup();
    throw error;
  }

  return {
    name,
    host,
    socket,
    dir,
    pid: () => (child && child.exitCode === null && child.signalCode === null ? child.pid : undefined),
    start,
    kill,
    async loadImages(images) {
      // pipefail: a failed save must not look like an empty, successful load.
      const res = await execa('bash', ['-o', 'pipefail', '-c', `docker save "$@" | DOCKER_HOST=${host} docker load -q`, 'save-load', ...images], { reject: false, timeout: 600_000 });
      if (res.exitCode !== 0) throw new Error(`loading ${images.join(', ')} into ${name} failed: ${res.stderr}`);
    },
    docker: dockerCli,
    log,
    cleanup,
  };
}

/** Every process in the namespace killed, the namespace deleted, the folders removed. */
async function removeEngine(name: string, dir: string): Promise<void> {
  const pids = await execa('ip', ['netns', 'pids', name], { reject: false });
  for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // Processes outside the namespace that the daemon started (none expected), by pid file.
  for (const file of ['docker.pid', path.join('exec', 'containerd', 'containerd.pid')]) {
    const pid = Number((await readFile(path.join(dir, file), 'utf8').catch(() => '')).trim());
    if (pid > 1 && (await isOurs(pid, dir))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  // Mounts of a daemon killed hard (overlay layers, the netns bind mount) before rm.
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  for (const mount of mounts.split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(dir)).reverse()) {
    await execa('umount', ['-l', mount], { reject: false });
  }
  await new Promise((r) => setTimeout(r, 200));
  await execa('ip', ['netns', 'delete', name], { reject: false });
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  await rm(`/run/${name}`, { recursive: true, force: true }).catch(() => undefined);
}

/** Is `pid` a process whose command line names `dir` (so it is this engine's)? */
async function isOurs(pid: number, dir: string): Promise<boolean> {
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmd.includes(dir);
}

async function isZombie(pid: number): Promise<boolean> {
  return /^State:\s+Z/m.test(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => 'State: Z'));
}

/** Namespaces and folders of second engines whose test process is gone. */
export async function reapStaleEngines(): Promise<void> {
  const list = await execa('ip', ['netns', 'list'], { reject: false });
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  for (const line of list.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${PREFIX}(\\d+)-\\d+$`).exec(name);
    if (!m || alive(Number(m[1]))) continue;
    await removeEngine(name, '/nonexistent');
  }
  for (const entry of await readdir('/tmp').catch(() => [] as string[])) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(entry);
    if (!m || alive(Number(m[1]))) continue;
    const dir = path.join('/tmp', entry);
    if (existsSync(path.join(dir, 'owner'))) await removeEngine(`${PREFIX}none`, dir);
  }
}
