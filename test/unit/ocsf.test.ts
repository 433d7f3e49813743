// The OCSF mapping of every kind of audit record, each event validated against the OCSF 1.8.0
// schema files kept in test/fixtures/ocsf-schema-1.8.0 (see its SOURCE.md).
import { describe, expect, it } from 'vitest';
import { OCSF_VERSION, toOcsf } from '../../src/audit/ocsf.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { OCSF_FIXTURE, OcsfSchema } from '../ocsf/validate.js';

const schema = new OcsfSchema(OCSF_FIXTURE);
const ctx = { productVersion: '0.1.0', agentImage: 'loopbox/agent:0.1.0' };

function rec(over: Partial<AuditRecord> & Record<string, unknown>): AuditRecord & Record<string, unknown> {
  return {
    time: '2026-11-24T18:33:52.750Z',
    runId: 'r1',
    task: 'fix-add',
    iteration: 3,
    role: 'agent',
    kind: 'packet',
    protocol: 'tcp',
    family: 'ipv4',
    direction: 'out',
    src: '10.213.126.3',
    srcPort: 59552,
    dst: '10.213.126.2',
    dstPort: 7000,
    uid: 1000,
    query: null,
    queryType: null,
    icmpType: null,
    verdict: 'rejected',
    rule: 'out-tcp',
    count: 1,
    ...over,
  };
}

const cases: Record<string, AuditRecord & Record<string, unknown>> = {
  tcp: rec({}),
  udp: rec({ protocol: 'udp', dstPort: 7001, rule: 'out-udp' }),
  icmp: rec({ protocol: 'icmp', srcPort: null, dstPort: null, icmpType: 8, rule: 'out-icmp' }),
  ipv6: rec({ family: 'ipv6', src: 'fd4c:78b6:3fe2::3', dst: 'fd4c:78b6:3fe2::2', rule: 'out6-tcp' }),
  inbound: rec({ direction: 'in', src: '10.213.126.2', srcPort: 7000, dst: '10.213.126.3', dstPort: 40000, uid: null, rule: 'in' }),
  otherProto: rec({ protocol: '132', srcPort: null, dstPort: null, uid: null, rule: 'out-other' }),
  noIteration: rec({ task: null, iteration: null }),
  dns: rec({ time: '2026-11-24T18:33:58.000Z', kind: 'dns', protocol: 'dns', src: '127.0.0.1', srcPort: 57808, dst: null, dstPort: 53, uid: null, query: 'exfil.invalid', queryType: 'AAAA', verdict: 'nxdomain', rule: 'dns' }),
  // A DNS question read from a packet the firewall refused (issue 17), and one it could not read.
  dnsRefused: rec({ kind: 'dns', protocol: 'udp', dstPort: 53, query: 'exfil.invalid', queryType: 'TXT', rule: 'out-udp' }),
  dnsUnreadable: rec({ kind: 'dns', protocol: 'udp', dstPort: 53, query: null, queryType: null, rule: 'out-udp', dnsError: 'compression pointer loop', payload: '1234c00c' }),
  lossPerRule: rec({ kind: 'loss', protocol: null, family: null, direction: null, src: null, srcPort: null, dst: null, dstPort: null, uid: null, verdict: 'lost', rule: 'dns-front', count: 60, loss: { source: 'dns-front', counted: 100, recorded: 40, kernelDropped: 60 } }),
  loss: rec({ kind: 'loss', protocol: null, family: null, direction: null, src: null, srcPort: null, dst: null, dstPort: null, uid: null, verdict: 'lost', rule: 'firewall logged 12000 packets, 11800 records arrived', count: 200 }),
  // The model gateway's refusal: path in `query`, method in `queryType`.
  modelDenied: rec({ kind: 'model-denied', protocol: 'http', src: null, srcPort: null, dst: '172.20.0.2', dstPort: 8080, uid: null, query: '/slots?x=<b>', queryType: 'GET', verdict: 'denied', rule: 'gateway 403 path' }),
  modelEscalated: rec({ kind: 'model-escalated', protocol: 'http', src: null, srcPort: null, dst: '203.0.113.7', dstPort: 443, uid: null, query: '/v1/chat/completions', queryType: 'POST', verdict: 'allowed', rule: 'gateway escalate 200', escalation: { model: 'big', status: 200, promptTokens: 18, cachedTokens: 0, completionTokens: 7, durationMs: 700 } }),
  modelDeniedOddMethod: rec({ kind: 'model-denied', protocol: 'http', src: null, srcPort: null, dst: '172.20.0.2', dstPort: 8080, uid: null, query: '/v1/x', queryType: 'BREW', verdict: 'denied', rule: 'gateway' }),
  // A kind this version does not map yet, with fields of its own.
  unknownKind: rec({ kind: 'model-future' as AuditRecord['kind'], protocol: 'http', path: '/slots', method: 'GET', reason: 'not allowed' }),
  // An aggregate record: attempts past the per-iteration limit, counted in one record.
  aggregate: rec({ count: 5000, aggregate: { firstTime: '2026-11-24T18:33:52.750Z', lastTime: '2026-11-24T18:34:10.000Z', distinct: 3, distinctCapped: false, sample: ['10.0.0.3:7000'], limit: 1000 } }),
  // The hash chain's fields, when the log carries them.
  chained: rec({ seq: 7, prev: 'a'.repeat(64), hash: 'b'.repeat(64) }),
};

describe('OCSF export', () => {
  for (const [name, record] of Object.entries(cases)) {
    it(`a ${name} record maps to an event that the OCSF ${OCSF_VERSION} schema accepts`, () => {
      const event = toOcsf(record, ctx);
      expect(schema.validate(event)).toEqual([]);
      expect(event.time).toBe(Date.parse(record.time));
      expect(event.metadata).toMatchObject({ version: OCSF_VERSION, product: { name: 'loopbox', vendor_name: 'loopbox', version: '0.1.0' }, correlation_uid: 'r1' });
    });
  }

  it('the schema fixtures are the version we target', () => {
    expect(schema.version).toBe(OCSF_VERSION);
  });

  it('a blocked TCP connection is Network Activity: Refuse, denied and blocked, outbound, with the container and the destination', () => {
    const e = toOcsf(cases.tcp!, ctx);
    expect(e).toMatchObject({
      class_uid: 4001,
      category_uid: 4,
      activity_id: 5,
      type_uid: 400105,
      action_id: 2,
      disposition_id: 2,
      connection_info: { protocol_name: 'tcp', direction_id: 2 },
      src_endpoint: { ip: '10.213.126.3', port: 59552, name: 'loopbox-r1-fix-add-i3-agent', uid: 'loopbox-r1-fix-add-i3-agent', container: { name: 'loopbox-r1-fix-add-i3-agent', image: { uid: 'loopbox/agent:0.1.0', name: 'loopbox/agent', tag: '0.1.0' } } },
      dst_endpoint: { ip: '10.213.126.2', port: 7000 },
      actor: { user: { uid: '1000' } },
      metadata: { labels: ['run:r1', 'task:fix-add', 'iteration:3'] },
      unmapped: { runId: 'r1', task: 'fix-add', iteration: 3, rule: 'out-tcp' },
    });
  });

  it('UDP and ICMP are Traffic (6); an inbound packet is direction 1 with the sandbox as destination', () => {
    expect(toOcsf(cases.udp!, ctx)).toMatchObject({ activity_id: 6, type_uid: 400106 });
    expect(toOcsf(cases.icmp!, ctx)).toMatchObject({ activity_id: 6, connection_info: { protocol_name: 'icmp', protocol_num: 1 } });
    const inbound = toOcsf(cases.inbound!, ctx);
    expect(inbound).toMatchObject({ activity_id: 6, connection_info: { direction_id: 1 }, dst_endpoint: { ip: '10.213.126.3', container: { name: 'loopbox-r1-fix-add-i3-agent' } } });
    expect((inbound.src_endpoint as Record<string, unknown>).container).toBeUndefined();
  });

  it('a DNS look-up is DNS Activity: Query with the name, type and NXDomain', () => {
    expect(toOcsf(cases.dns!, ctx)).toMatchObject({ class_uid: 4003, activity_id: 1, type_uid: 400301, query: { hostname: 'exfil.invalid', type: 'AAAA' }, rcode_id: 3, rcode: 'NXDomain' });
  });

  it('a request the model gateway refused is HTTP Activity with the method, path and status; an odd method is Other', () => {
    expect(toOcsf(cases.modelDenied!, ctx)).toMatchObject({ class_uid: 4002, activity_id: 3, type_uid: 400203, action_id: 2, disposition_id: 2, http_request: { http_method: 'GET', url: { path: '/slots?x=<b>', port: 8080 } }, http_response: { code: 403 }, dst_endpoint: { ip: '172.20.0.2', port: 8080 } });
    // A request sent to model.escalate's endpoint: allowed HTTP activity with the model in the message.
    expect(toOcsf(cases.modelEscalated!, ctx)).toMatchObject({ class_uid: 4002, activity_id: 6, action_id: 1, disposition_id: 1, severity_id: 1, http_response: { code: 200 }, dst_endpoint: { svc_name: 'model-escalate', ip: '203.0.113.7', port: 443 }, unmapped: { escalation: { model: 'big', completionTokens: 7 } } });
    expect(String(toOcsf(cases.modelEscalated!, ctx).message)).toContain('(model big)');
    const odd = toOcsf(cases.modelDeniedOddMethod!, ctx);
    expect(odd).toMatchObject({ class_uid: 4002, activity_id: 99, type_uid: 400299 });
    expect((odd.http_request as Record<string, unknown>).http_method).toBeUndefined();
  });

  it('an aggregate record keeps its count and gets the time span it covers', () => {
    expect(toOcsf(cases.aggregate!, ctx)).toMatchObject({ count: 5000, start_time: Date.parse('2026-11-24T18:33:52.750Z'), end_time: Date.parse('2026-11-24T18:34:10.000Z'), unmapped: { aggregate: { distinct: 3, limit: 1000 } } });
  });

  it('fields the mapping does not know pass through in unmapped; the chain fields also fill metadata.sequence and uid', () => {
    expect(toOcsf(cases.unknownKind!, ctx)).toMatchObject({ class_uid: 0, unmapped: { kind: 'model-future', path: '/slots', method: 'GET', reason: 'not allowed' } });
    expect(toOcsf(cases.chained!, ctx)).toMatchObject({ metadata: { sequence: 7, uid: 'b'.repeat(64) }, unmapped: { seq: 7, prev: 'a'.repeat(64), hash: 'b'.repeat(64) } });
  });

  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- patches reach deep into a plain JSON event
  type Json = Record<string, any>;
  it('the validator rejects what the schema forbids (so a pass means something)', () => {
    /* eslint-disable @typescript-eslint/no-unsafe-member-access */
    const good = toOcsf(cases.tcp!, ctx);
    const bad = (patch: (e: Json) => void): string[] => {
      const e = structuredClone(good) as Json;
      patch(e);
      return schema.validate(e);
    };
    expect(bad((e) => delete e.severity_id)).toContain('network_activity.severity_id: required, missing');
    expect(bad((e) => (e.activity_id = 42)).join()).toMatch(/activity_id: 42 is not one of its enum values/);
    expect(bad((e) => (e.connection_info.direction_id = 7)).join()).toMatch(/connection_info.direction_id: 7 is not one/);
    expect(bad((e) => (e.dst_endpoint.port = 70000)).join()).toMatch(/dst_endpoint.port: 70000 outside/);
    expect(bad((e) => (e.dst_endpoint.ip = 'not-an-ip')).join()).toMatch(/dst_endpoint.ip/);
    expect(bad((e) => (e.src_endpoint.container.image = { name: 'x' })).join()).toMatch(/image.uid: required/);
    expect(bad((e) => (e.made_up = 1)).join()).toMatch(/made_up: not an attribute/);
    expect(bad((e) => (e.type_uid = 400106)).join()).toMatch(/type_uid/);
    expect(bad((e) => (e.metadata.profiles = ['container', 'host'])).join()).toMatch(/profile security_control/);
    expect(bad((e) => delete e.metadata.product).join()).toMatch(/metadata.product: required/);
    expect(bad((e) => (e.time = '2026-11-24')).join()).toMatch(/time: expected an integer/);
    /* eslint-enable @typescript-eslint/no-unsafe-member-access */
  });
  it('a refused DNS packet is DNS Activity aimed at its resolver, never answered; an unreadable one says why', () => {
    const refused = toOcsf(cases.dnsRefused!, ctx);
    expect(refused).toMatchObject({ class_uid: 4003, query: { hostname: 'exfil.invalid', type: 'TXT' }, dst_endpoint: { ip: '10.213.126.2', port: 53 }, disposition: 'Blocked' });
    expect(refused).not.toHaveProperty('rcode_id');
    const unreadable = toOcsf(cases.dnsUnreadable!, ctx);
    expect(String(unreadable.message)).toContain('compression pointer loop');
    expect(unreadable.unmapped).toMatchObject({ dnsError: 'compression pointer loop', payload: '1234c00c' });
    expect(String(toOcsf(cases.lossPerRule!, ctx).message)).toBe("60 audit record(s) lost: the DNS front's port counted 100 attempt(s), 40 record(s) arrived, 60 dropped by the kernel");
  });
});

