import { describe, expect, it } from 'vitest';
import { DEADLINE_GRACE_MS, agentSpec, containerName, sentrySpec } from '../../src/sandbox/specs.js';
import { parseDebianMirror } from '../../src/images/base.js';
import { agentInvocation } from '../../src/loop/agents.js';
import { parseConfig } from '../../src/config/load.js';
import { CONFIG_TEMPLATE } from '../../src/config/init.js';
import { parse } from 'yaml';

describe('sandbox container specs', () => {
  const agent = agentSpec({ runId: 'r', task: 't', iteration: 1, image: 'img', sentryId: 'abc', cmd: ['true'], binds: [], memoryBytes: 1 << 30, cpus: 1.5, pids: 128 });

  it('the agent has no network of its own, no capabilities, no privilege gain, a read-only root and limits', () => {
    expect(agent.networkMode).toBe('container:abc');
    expect(agent.capDrop).toEqual(['ALL']);
    // Only the container's init keeps these, to drop to the agent's uid and enforce the deadline.
    expect(agent.capAdd).toEqual(['SETUID', 'SETGID', 'KILL']);
    expect(agent.securityOpt).toContain('no-new-privileges');
    expect(agent.user).toBe('0:0');
    expect(agent.entrypoint).toEqual(expect.arrayContaining(['timeout', 'setpriv', '--reuid=1000', '--regid=1000', '--clear-groups', '--inh-caps=-all', '--']));
    expect(agent.cmd).toEqual(['true']);
    expect(agent.autoRemove).toBe(true);
    expect(agent.readonlyRootfs).toBe(true);
    expect(Object.keys(agent.tmpfs ?? {})).toEqual(['/tmp', '/home/agent']);
    expect(agent.tmpfs?.['/home/agent']).toContain('uid=1000');
    expect(agent).toMatchObject({ pidsLimit: 128, memoryBytes: 1 << 30, nanoCpus: 1.5e9 });
    expect(agent.binds).toEqual([]);
    expect(agent.labels).toMatchObject({ 'loopbox.managed': 'true', 'loopbox.run-id': 'r', 'loopbox.task': 't', 'loopbox.iteration': '1', 'loopbox.role': 'agent' });
  });

  it('the sentry gets only its set-up capabilities, privileged low ports, our DNS, and the audit folder', () => {
    const sentry = sentrySpec({
      runId: 'r', image: 'img', auditDir: '/host/audit', allow: ['10.0.0.9:443'], dnsHosts: { model: '10.0.0.2' },
      model: '10.0.0.2:8080', gateway: { maxBodyBytes: 1000, maxTokens: 64, tokenBudget: 500, tokensUsed: 20 },
    });
    expect(sentry.capDrop).toEqual(['ALL']);
    expect(sentry.capAdd).toEqual(['NET_ADMIN', 'NET_BIND_SERVICE', 'SETUID', 'SETGID', 'CHOWN']);
    // Docker's default floor of 0 would let the agent bind :53 beside dnsmasq (issue 8, item 2).
    expect(sentry.sysctls?.['net.ipv4.ip_unprivileged_port_start']).toBe('1024');
    expect(sentry.dns).toEqual(['127.0.0.1']);
    expect(sentry.env).toEqual({
      LOOPBOX_ALLOW: '10.0.0.9:443', LOOPBOX_DNS_HOSTS: 'model=10.0.0.2', LOOPBOX_MODEL: '10.0.0.2:8080',
      LOOPBOX_GW_MAX_BODY: '1000', LOOPBOX_GW_MAX_TOKENS: '64', LOOPBOX_GW_TOKEN_BUDGET: '500', LOOPBOX_GW_TOKENS_USED: '20',
    });
    expect(sentry.binds).toEqual([{ host: '/host/audit', container: '/audit', readOnly: false }]);
    expect(sentry.networkMode).toBe('loopbox-model');
  });

  it('the container deadline is the host timeout plus the grace, and runs the image entrypoint too', () => {
    const a = agentSpec({ runId: 'r', image: 'img', sentryId: 'abc', entrypoint: ['/ep'], cmd: ['x'], binds: [], memoryBytes: 1, cpus: 1, pids: 16, timeoutMs: 5000, user: '1234:99' });
    expect(a.entrypoint?.slice(0, 3)).toEqual(['timeout', '--signal=KILL', `${5 + DEADLINE_GRACE_MS / 1000}s`]);
    expect(a.entrypoint).toContain('--reuid=1234');
    expect(a.entrypoint).toContain('--regid=99');
    expect(a.cmd).toEqual(['/ep', 'x']);
  });

  it('names containers from run, task, iteration and role', () => {
    expect(containerName({ runId: 'r1', task: 'fix', iteration: 3 }, 'agent')).toBe('loopbox-r1-fix-i3-agent');
  });
});

describe('agent adapters', () => {
  it('opencode: config points at the model, no prompts, project config disabled', () => {
    const inv = agentInvocation(parseConfig({}), 2);
    expect(inv.cmd.slice(0, 4)).toEqual(['opencode', 'run', '--auto', '-m']);
    expect(inv.env).toMatchObject({ OPENCODE_CONFIG: '/loopbox/opencode.json', OPENCODE_DISABLE_PROJECT_CONFIG: '1', LOOPBOX_ITERATION: '2' });
    const config = JSON.parse(inv.files['opencode.json']!) as { provider: { loopbox: { options: { baseURL: string } } }; permission: Record<string, string> };
    expect(config.provider.loopbox.options.baseURL).toBe('http://model:8080/v1');
    expect(config.permission).toMatchObject({ edit: 'allow', bash: 'allow', webfetch: 'deny' });
  });

  it('command: runs the argv with the loop facts in its environment', () => {
    const inv = agentInvocation(parseConfig({ agent: { type: 'command', command: ['my-agent', '--go'] } }), 1);
    expect(inv.cmd).toEqual(['my-agent', '--go']);
    expect(inv.env).toMatchObject({ LOOPBOX_MODEL_URL: 'http://model:8080/v1', LOOPBOX_TASK_FILE: '/loopbox/task.md', LOOPBOX_FEEDBACK_FILE: '/loopbox/feedback.md' });
    expect(inv.files).toEqual({});
  });
});

describe('odds and ends', () => {
  it('writes endpoints for the sentry with IPv6 in brackets, resolving nothing for literal addresses', async () => {
    const { endpoint, resolveEndpoints } = await import('../../src/sandbox/sandbox.js');
    expect(endpoint('10.0.0.2', 8080)).toBe('10.0.0.2:8080');
    expect(endpoint('fd00::1', 8080)).toBe('[fd00::1]:8080');
    expect(await resolveEndpoints(['[fd00::1]:8080', '192.168.7.9:11434'])).toEqual(['[fd00::1]:8080', '192.168.7.9:11434']);
    await expect(resolveEndpoints(['host-without-port'])).rejects.toThrow(/is not host:port/);
    await expect(resolveEndpoints(['10.0.0.1:70000'])).rejects.toThrow(/out of range/);
  });

  it('finds the Debian mirror in one-line and deb822 apt sources', () => {
    expect(parseDebianMirror('deb http://deb.debian.org/debian bookworm main\ndeb http://security.debian.org/debian-security bookworm-security main')).toBe('http://deb.debian.org/debian');
    expect(parseDebianMirror('Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm')).toBe('http://mirror.example/debian');
    expect(parseDebianMirror('# deb http://x/debian bookworm main')).toBeUndefined();
  });

  it('the init template is a valid config', () => {
    expect(() => parseConfig(parse(CONFIG_TEMPLATE))).not.toThrow();
  });
});
