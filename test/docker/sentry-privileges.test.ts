// Less power in the sentry (issue 8, item 5): once it is set up, no process in the sentry holds
// a capability, and the daemons that parse what the agent sends (dnsmasq, the packet logger, the model
// gateway, the DNS front) each run as their own unprivileged user. Read from /proc of a live sentry.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Sentry } from '../../src/sandbox/sandbox.js';
import { docker, testRunId, useTestRun } from './helpers.js';

interface Proc {
  name: string;
  uid: number;
  capEff: bigint;
  capPrm: bigint;
}

// Shell builtins only, so that the listing starts no process of its own besides this shell.
const LIST = `for d in /proc/[0-9]*; do
  n=; pp=; u=; e=; p=
  while read -r k v rest; do
    case $k in Name:) n=$v ;; PPid:) pp=$v ;; Uid:) u=$v ;; CapEff:) e=$v ;; CapPrm:) p=$v ;; esac
  done <"$d/status" 2>/dev/null
  [ -z "$n" ] || [ "\${d#/proc/}" = "$$" ] || [ "$pp" = "$$" ] || echo "$n $u $e $p"
done`;

describe('sentry privileges (real Docker)', () => {
  useTestRun('priv');

  it('after set-up no sentry process holds a capability; dnsmasq, the packet logger, the DNS front and the gateway run as their own users', async () => {
    const runId = testRunId('priv');
    const auditDir = await mkdtemp(path.join(tmpdir(), 'lbx-priv-'));
    const sentry = await Sentry.start(docker, { runId, auditDir });
    try {
      expect(sentry.modelReachable, 'the global setup starts a model server, so the gateway runs').toBe(true);
      const res = await docker.exec(sentry.id, ['/bin/bash', '-c', LIST]);
      expect(res.exitCode, res.stderr).toBe(0);
      const procs: Proc[] = res.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(' '))
        .map(([name, uid, eff, prm]) => ({ name: name!, uid: Number(uid), capEff: BigInt(`0x${eff}`), capPrm: BigInt(`0x${prm}`) }));
      const byName = (n: string): Proc | undefined => procs.find((p) => p.name === n);
      expect(byName('dnsmasq')?.uid, res.stdout).toBe(999);
      // The model gateway (lbxgw), the DNS front (lbxdns) and the packet logger (lbxlog).
      expect(procs.filter((p) => p.name === 'python3').map((p) => p.uid).sort(), res.stdout).toEqual([990, 991, 992]);
      // PID 1 and the watcher: nobody.
      expect(byName('tini')?.uid, res.stdout).toBe(65534);
      for (const p of procs) {
        expect(p.capEff, `${p.name} (uid ${p.uid}) effective capabilities`).toBe(0n);
        expect(p.capPrm, `${p.name} (uid ${p.uid}) permitted capabilities`).toBe(0n);
        expect(p.uid, `${p.name} runs as root`).not.toBe(0);
      }
    } finally {
      await sentry.stop();
      await rm(auditDir, { recursive: true, force: true });
    }
  });
});
