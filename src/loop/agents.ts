// Agent adapters: how one iteration's agent is started inside the sandbox. `opencode` runs
// OpenCode non-interactively against the model; `command` runs any argv (Codex, Claude Code,
// aider, a script) with the loop's facts in its environment.
import type { Config } from '../config/schema.js';
import { MODEL_HOSTNAME, MODEL_PORT } from '../model/network.js';

/** Inside the sandbox: the read-only loop folder and the agent's writable notes. */
export const LOOP_MOUNT = '/loopbox';
export const NOTES_MOUNT = '/loopbox/notes';
export const TASK_FILE = `${LOOP_MOUNT}/task.md`;
export const FEEDBACK_FILE = `${LOOP_MOUNT}/feedback.md`;
export const OPENCODE_CONFIG_FILE = `${LOOP_MOUNT}/opencode.json`;
export const OPENCODE_PROVIDER = 'loopbox';

export interface AgentInvocation {
  cmd: string[];
  env: Record<string, string>;
  /** Files the host writes into the loop folder for this adapter (name → content). */
  files: Record<string, string>;
}

/** The model's URL as the agent sees it: the managed server as `model:8080`, or `model.endpoint` as given. */
export function modelUrlFor(config: Config): string {
  return config.model.endpoint ? config.model.endpoint.replace(/\/+$/, '') : `http://${MODEL_HOSTNAME}:${MODEL_PORT}/v1`;
}

export function agentInvocation(config: Config, iteration: number): AgentInvocation {
  const env: Record<string, string> = {
    LOOPBOX_MODEL_URL: modelUrlFor(config),
    LOOPBOX_TASK_FILE: TASK_FILE,
    LOOPBOX_FEEDBACK_FILE: FEEDBACK_FILE,
    LOOPBOX_NOTES_DIR: NOTES_MOUNT,
    LOOPBOX_ITERATION: String(iteration),
    LOOPBOX_WORKSPACE: '/workspace',
  };
  if (config.agent.type === 'command') {
    return { cmd: config.agent.command ?? [], env, files: {} };
  }
  const model = config.model.name;
  const ref = `${OPENCODE_PROVIDER}/${model}`;
  const opencodeConfig = {
    $schema: 'https://opencode.ai/config.json',
    model: ref,
    small_model: ref,
    enabled_providers: [OPENCODE_PROVIDER],
    autoupdate: false,
    share: 'disabled',
    lsp: false,
    formatter: false,
    // Tools inside the sandbox are allowed: the sandbox, not a prompt, is the boundary, and a
    // permission prompt would hang an unattended run.
    permission: { edit: 'allow', bash: 'allow', webfetch: 'deny', external_directory: 'deny', doom_loop: 'allow' },
    provider: {
      [OPENCODE_PROVIDER]: {
        npm: '@ai-sdk/openai-compatible',
        name: 'loopbox local model',
        options: { baseURL: env.LOOPBOX_MODEL_URL, apiKey: 'loopbox' },
        models: { [model]: { name: model, tools: true, limit: { context: config.agent.contextLimit, output: config.agent.outputLimit } } },
      },
    },
  };
  return {
    cmd: ['opencode', 'run', '--auto', '-m', ref, opencodePrompt(config)],
    env: {
      ...env,
      OPENCODE_CONFIG: OPENCODE_CONFIG_FILE,
      OPENCODE_DISABLE_AUTOUPDATE: '1',
      OPENCODE_DISABLE_SHARE: '1',
      // The repository is agent-writable: its own opencode.json / .opencode/ must not be able to
      // change the provider or the permissions. AGENTS.md is named in the prompt instead.
      OPENCODE_DISABLE_PROJECT_CONFIG: '1',
    },
    files: { 'opencode.json': `${JSON.stringify(opencodeConfig, null, 2)}\n` },
  };
}

export function opencodePrompt(config: Config): string {
  return [
    `Your task is in ${TASK_FILE}. Work in /workspace (a checkout of the repository); read /workspace/AGENTS.md if it exists.`,
    `If ${FEEDBACK_FILE} exists, it holds the result of the last verification: read it first and fix what failed.`,
    `Keep short progress notes in ${NOTES_MOUNT}/progress.md (what you tried, what is left); they persist between iterations.`,
    'You cannot run git; the harness commits and verifies your work after you stop. Stop when you think the task is done.',
    config.agent.prompt ?? '',
  ]
    .filter(Boolean)
    .join('\n');
}
