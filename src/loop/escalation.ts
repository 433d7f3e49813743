// model.escalate (issue 20): the seed's hybrid. The local model does the work until it has
// failed verification `after` times (or the loop stalls); then the run's sentry is replaced by
// one whose gateway sends the agent's model requests to the escalation endpoint, with a key
// only that gateway holds. Escalated tokens are capped by `tokenBudget`: once it is used, the
// loop goes back to the local model for good (the other brakes still end it). Pure functions
// here; the sentry switch is SentryKeeper's (iteration.ts), the key is read on the host.
import { ConfigError } from '../common/errors.js';
import type { Config } from '../config/schema.js';

export type EscalateConfig = NonNullable<Config['model']['escalate']>;

/** What the run keeps about escalation (state.json). */
export interface EscalationState {
  /** Iterations that failed verification so far (voided ones not counted). */
  failed: number;
  /** The agent's model requests go to the escalation endpoint from the next iteration on. */
  active: boolean;
  /** Why it escalated (or why it went back), for people. */
  reason: string | null;
  /** The first escalated iteration. */
  since: number | null;
  /** Escalated tokens used (uncached prompt + completion). */
  tokens: number;
  /** The escalation budget is used: back to the local model for the rest of the run. */
  exhausted: boolean;
}

export const NO_ESCALATION: EscalationState = { failed: 0, active: false, reason: null, since: null, tokens: 0, exhausted: false };

/** Which model did an iteration's work: the name it is known by, and whether it was escalated. */
export interface WorkerModel {
  name: string;
  escalated: boolean;
}

export function workerModel(config: Config, escalation: EscalationState | undefined): WorkerModel {
  const esc = config.model.escalate;
  if (esc && escalation?.active) return { name: esc.model, escalated: true };
  return { name: config.model.name, escalated: false };
}

/**
 * Does this iteration's agent take one of the local model server's slots (the runner's
 * agentSlots)? Not when escalated: its sentry's gateway sends every model request to
 * model.escalate's endpoint and none to the local server, so holding a local slot would only
 * keep a loop that does need the local model waiting.
 */
export function usesLocalModelSlot(config: Config, escalation: EscalationState | undefined): boolean {
  return !workerModel(config, escalation).escalated;
}

/**
 * The escalation state after an iteration. `stalled`: the brakes would end the loop as stalled
 * now; an escalation that has not happened yet takes the place of that end (the caller goes on).
 */
export function afterIteration(
  esc: EscalateConfig | undefined,
  before: EscalationState | undefined,
  record: { iteration: number; verified: boolean; modelDown: boolean; tokens: number; model?: { escalated?: boolean } | undefined },
  signals: { stalled: boolean; escalateBudgetExceeded: boolean },
): { state: EscalationState; escalatedNow: boolean; wentBack: boolean } {
  const s: EscalationState = { ...(before ?? NO_ESCALATION) };
  if (!esc) return { state: s, escalatedNow: false, wentBack: false };
  if (record.model?.escalated) s.tokens += record.tokens;
  if (!record.verified && !record.modelDown) s.failed += 1;
  let wentBack = false;
  if (s.active && (signals.escalateBudgetExceeded || (esc.tokenBudget !== undefined && s.tokens >= esc.tokenBudget))) {
    s.active = false;
    s.exhausted = true;
    s.reason = `escalation token budget of ${esc.tokenBudget ?? '?'} used (${s.tokens}): back to the local model`;
    wentBack = true;
  }
  let escalatedNow = false;
  if (!s.active && !s.exhausted && !record.verified) {
    if (s.failed >= esc.after) s.reason = `after ${s.failed} iteration(s) that failed verification`;
    else if (signals.stalled) s.reason = 'the loop stalled on the local model';
    if (s.failed >= esc.after || signals.stalled) {
      s.active = true;
      s.since = record.iteration + 1;
      escalatedNow = true;
    }
  }
  return { state: s, escalatedNow, wentBack };
}

/** The key from the host's environment; an error (before anything runs) when the named variable is unset. */
export function escalateApiKey(esc: EscalateConfig, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!esc.apiKeyEnv) return undefined;
  const key = env[esc.apiKeyEnv];
  if (!key) {
    throw new ConfigError(`model.escalate.apiKeyEnv names ${esc.apiKeyEnv}, but that environment variable is not set.`, [], {
      hint: `export ${esc.apiKeyEnv}=<key> in the shell that runs loopbox (the key is never written to a file and never reaches the agent), or remove model.escalate.apiKeyEnv for an endpoint without a key.`,
    });
  }
  if (!/^[\x21-\x7e]+$/.test(key)) {
    throw new ConfigError(`The key in ${esc.apiKeyEnv} has spaces or control characters: it cannot go into an Authorization header.`, [], { hint: `Set ${esc.apiKeyEnv} to the key alone, on one line.` });
  }
  return key;
}
