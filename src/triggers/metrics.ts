// Prometheus metrics of `loopbox serve` (issue 17 item 3), in the text exposition format by
// prom-client. Counters move on the loop events the runner already emits (iteration-end,
// loop-start, loop-end); gauges (loops running/queued, model slots) are read at scrape time.
// Labels are low-cardinality only: task (bounded by serve.tasks and serve.github.task), end
// state, iteration result, firewall rule, token kind. Never a run id, a DNS name or an address.
// docs/metrics.md documents each metric.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { LoopEvent } from '../loop/loop.js';
import type { IterationRecord } from '../loop/state.js';

/** What the metrics read at scrape time. */
export interface MetricsSources {
  /** Loops in this process's runner: waiting for a pool slot, and past it. */
  loops(): { running: number; queued: number };
  /** The model server's `/slots` now; undefined when it does not answer (or is not managed). */
  modelSlots(): Promise<{ busy: number; total: number } | undefined>;
}

/** What `startServer` needs to answer GET /metrics. */
export interface MetricsEndpoint {
  contentType: string;
  render(): Promise<string>;
}

/** The result label of `loopbox_iterations_total`. */
export type IterationResult = 'verified' | 'failed' | 'verify-timeout' | 'untrusted' | 'agent-failed' | 'model-down' | 'void';
export const ITERATION_RESULTS: readonly IterationResult[] = ['verified', 'failed', 'verify-timeout', 'untrusted', 'agent-failed', 'model-down', 'void'];

/** One word for how an iteration ended, from its record. */
export function iterationResult(record: IterationRecord): IterationResult {
  if (record.void !== undefined) return 'void';
  if (record.modelDown) return 'model-down';
  if (record.verified) return 'verified';
  if (record.untrusted !== null) return 'untrusted';
  if (record.verify === null) return 'agent-failed';
  if (record.verify.timedOut) return 'verify-timeout';
  return 'failed';
}

/** Label values a scrape may carry: no more than MAX_RULES distinct rules, each a short plain word. */
const MAX_RULES = 64;
const RULE = /^[A-Za-z0-9][A-Za-z0-9 _:.-]{0,63}$/;

/** Seconds: a test suite from a second to half an hour. */
export const VERIFY_BUCKETS = [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

export class LoopMetrics implements MetricsEndpoint {
  readonly registry = new Registry();
  private readonly rules = new Set<string>();
  private readonly loopsGauge: Gauge<'state'>;
  private readonly loopsStarted: Counter<'task'>;
  private readonly loopsEnded: Counter<'task' | 'end_state'>;
  private readonly iterations: Counter<'task' | 'result'>;
  private readonly verifySeconds: Histogram<'task' | 'result'>;
  private readonly blocked: Counter<'task' | 'rule'>;
  private readonly lost: Counter<'task' | 'rule'>;
  private readonly tokens: Counter<'task' | 'kind'>;
  private readonly modelRequests: Counter<'task'>;
  private readonly modelUp: Gauge;
  private readonly slotsBusy: Gauge;
  private readonly slotsTotal: Gauge;
  private slots: { busy: number; total: number } | undefined;

  constructor(
    private readonly sources: MetricsSources,
    options: { processMetrics?: boolean } = {},
  ) {
    const registers = [this.registry];
    // Process metrics (RSS, CPU, event-loop lag) of the serve process itself, prefixed.
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'loopbox_serve_' });
    this.loopsGauge = new Gauge({
      name: 'loopbox_loops',
      help: 'Loops of this serve process by state: running (past the concurrency pool) or queued (waiting for it).',
      labelNames: ['state'],
      registers,
      collect() {
        const { running, queued } = sources.loops();
        this.set({ state: 'running' }, running);
        this.set({ state: 'queued' }, queued);
      },
    });
    this.loopsStarted = new Counter({ name: 'loopbox_loops_started_total', help: 'Loops that started (their first iteration is under way or done), by task.', labelNames: ['task'], registers });
    this.loopsEnded = new Counter({ name: 'loopbox_loops_ended_total', help: 'Loops that ended, by task and end state (done, capped, stalled, timed-out-budget, aborted, error).', labelNames: ['task', 'end_state'], registers });
    this.iterations = new Counter({
      name: 'loopbox_iterations_total',
      help: 'Iterations that ended, by task and result (verified, failed, verify-timeout, untrusted, agent-failed, model-down, void).',
      labelNames: ['task', 'result'],
      registers,
    });
    this.verifySeconds = new Histogram({
      name: 'loopbox_verify_duration_seconds',
      help: 'How long the verify command ran on each verified-or-not iteration, by task and result (passed, failed, timeout).',
      labelNames: ['task', 'result'],
      buckets: VERIFY_BUCKETS,
      registers,
    });
    this.blocked = new Counter({ name: 'loopbox_blocked_attempts_total', help: 'Blocked egress attempts of the sandboxes, by task and firewall rule (or dns, or the model gateway refusal).', labelNames: ['task', 'rule'], registers });
    this.lost = new Counter({ name: 'loopbox_audit_lost_records_total', help: 'Attempts the sentry counted but could not record one by one (explicit loss records), by task and counter.', labelNames: ['task', 'rule'], registers });
    this.tokens = new Counter({
      name: 'loopbox_model_tokens_total',
      help: 'Model tokens of the agents, by task and kind: input (prompt, cached included), cached (prompt tokens served from the cache), output (completion).',
      labelNames: ['task', 'kind'],
      registers,
    });
    this.modelRequests = new Counter({ name: 'loopbox_model_requests_total', help: 'Model requests of the agents through the sandbox gateway, by task.', labelNames: ['task'], registers });
    const slots = (): { busy: number; total: number } | undefined => this.slots;
    this.modelUp = new Gauge({
      name: 'loopbox_model_up',
      help: '1 when the model server answered /slots at this scrape, else 0.',
      registers,
      collect() {
        this.set(slots() ? 1 : 0);
      },
    });
    this.slotsBusy = new Gauge({
      name: 'loopbox_model_slots_busy',
      help: 'Model server slots processing a request at this scrape (from /slots; 0 when loopbox_model_up is 0).',
      registers,
      collect() {
        this.set(slots()?.busy ?? 0);
      },
    });
    this.slotsTotal = new Gauge({
      name: 'loopbox_model_slots_total',
      help: 'Model server slots (from /slots; 0 when loopbox_model_up is 0).',
      registers,
      collect() {
        this.set(slots()?.total ?? 0);
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text; /slots is read once per scrape, before the gauges collect. */
  async render(): Promise<string> {
    this.slots = await this.sources.modelSlots().catch(() => undefined);
    return this.registry.metrics();
  }

  /** Feed every loop event of the runner here. */
  observe(event: LoopEvent): void {
    switch (event.type) {
      case 'loop-start':
        this.loopsStarted.inc({ task: event.task });
        return;
      case 'loop-end':
        this.loopsEnded.inc({ task: event.summary.task, end_state: event.summary.endState });
        return;
      case 'iteration-end':
        this.iteration(event.task, event.record);
        return;
      default:
        return;
    }
  }

  private iteration(task: string, record: IterationRecord): void {
    this.iterations.inc({ task, result: iterationResult(record) });
    if (record.verify) {
      const result = record.verify.timedOut ? 'timeout' : record.verify.passed ? 'passed' : 'failed';
      this.verifySeconds.observe({ task, result }, record.verify.durationMs / 1000);
    }
    const traffic = record.audit;
    for (const [rule, n] of Object.entries(traffic.blockedByRule ?? {})) if (n > 0) this.blocked.inc({ task, rule: this.rule(rule) }, n);
    if (traffic.lostByRule) {
      for (const [rule, n] of Object.entries(traffic.lostByRule)) if (n > 0) this.lost.inc({ task, rule: this.rule(rule) }, n);
    } else if (traffic.lostRecords > 0) this.lost.inc({ task, rule: 'unknown' }, traffic.lostRecords);
    if (record.model) {
      if (record.model.promptTokens > 0) this.tokens.inc({ task, kind: 'input' }, record.model.promptTokens);
      if (record.model.cachedTokens > 0) this.tokens.inc({ task, kind: 'cached' }, record.model.cachedTokens);
      if (record.model.completionTokens > 0) this.tokens.inc({ task, kind: 'output' }, record.model.completionTokens);
      if (record.model.requests > 0) this.modelRequests.inc({ task }, record.model.requests);
    }
  }

  /** A rule name as a label value: plain and short, and at most MAX_RULES of them (then `other`). */
  private rule(name: string): string {
    const value = RULE.test(name) ? name : 'other';
    if (this.rules.has(value)) return value;
    if (this.rules.size >= MAX_RULES) return 'other';
    this.rules.add(value);
    return value;
  }
}
