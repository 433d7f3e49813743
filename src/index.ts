// The public library API. The CLI (src/cli) is a thin layer over exactly these exports: a lint
// rule (.dependency-cruiser.mjs, cli-only-through-the-library) keeps it from reaching past them.

// Loops: one task, iterated in a sandbox until verification passes or a brake stops it.
export { runLoop, checkRepoAndModel, loopBackend } from './loop/loop.js';
export type { LoopEvent, LoopSummary, LoopOptions } from './loop/loop.js';
export { loadTask, taskNameOf } from './loop/task.js';
export type { Task } from './loop/task.js';
export { resolveTaskFiles } from './loop/tasks.js';
export { pruneDeadWorktrees } from './loop/workspace.js';

// Runner: several loops at once, bounded by the model's slots; status and stop from elsewhere.
export { LoopRunner } from './runner/runner.js';
export { loopStatus, stopLoops } from './runner/status.js';
export type { LoopStatusRow, StopTarget } from './runner/status.js';

// Triggers: cron and webhooks, which start loops through a LoopStarter (the runner is one).
export { startScheduler } from './triggers/cron.js';
export { metricsTokenFromEnv, secretFromEnv, startServer } from './triggers/serve.js';
export { LoopMetrics, iterationResult } from './triggers/metrics.js';
export type { IterationResult, MetricsEndpoint, MetricsSources } from './triggers/metrics.js';
export type { LoopStarter, StartRequest, StartResult, TriggerEvent, TriggerLog } from './triggers/starter.js';

// Where containers run, and the sandbox itself.
export type { ContainerBackend, SandboxHandle } from './backend/backend.js';
export { DockerBackend } from './backend/docker.js';
export { runSandbox, Sentry, runAgent, sandboxAuditDir } from './sandbox/sandbox.js';
export type { SandboxOptions, SandboxResult, SentryOptions, AgentOptions, AgentRun } from './sandbox/sandbox.js';
export { runStandaloneSandbox } from './sandbox/standalone.js';
export type { StandaloneSandboxOptions } from './sandbox/standalone.js';
export { agentSpec, sentrySpec } from './sandbox/specs.js';
export { ingestSandboxAudit } from './egress/ingest.js';

// Verification: the verify command in a clean container with no network, on a git tree.
export { runVerify } from './verify/verify.js';
export type { VerifyOptions, VerifyResult } from './verify/verify.js';

// Audit: the chained log, its verification, queries, OCSF, terminal tables.
export { queryAudit, appendAudit, auditFile, sealAudit, formatTable, formatAuditTable, auditRow, formatFollowRow, AUDIT_TABLE_HEADER } from './audit/log.js';
export { verifyAuditChain, formatVerification, canonicalize, loadAuditKey, parseVerifierKey } from './audit/chain.js';
export type { ChainVerification, ChainBreak, VerifyOptions as ChainVerifyOptions } from './audit/chain.js';
export type { AuditRecord, AuditAggregate, AuditQuery, SandboxIdentity, StoredAuditRecord, SandboxTraffic } from './audit/record.js';
export { streamAudit } from './audit/stream.js';
export type { AuditLine, StreamOptions } from './audit/stream.js';
export { OCSF_VERSION, toOcsf } from './audit/ocsf.js';
export type { OcsfContext } from './audit/ocsf.js';
export { writeReport, writeReports } from './report/report.js';
export type { WrittenReport } from './report/report.js';
export { gatherReport } from './report/data.js';
export type { ReportData, ChainResult } from './report/data.js';

// After a loop: push, pull request, notify; and the morning digest over the runs directory.
export { checkDeliveryConfig, deliverRun, readDelivery, DELIVERY_FILE } from './deliver/deliver.js';
export type { DeliveryRecord, PushRecord, PullRequestRecord } from './deliver/deliver.js';
export { pushRun, PushError } from './deliver/push.js';
export { deliveryChecks, type DeliveryCheck } from './deliver/checks.js';
export { notify, notifyBody, NOTIFY_SCHEMA } from './deliver/notify.js';
export type { NotifyBody, NotifyRun } from './deliver/notify.js';
export { openOrUpdatePullRequest, pullRequestBody, PullRequestError } from './deliver/pull-request.js';
export { gatherDigest, renderDigestText } from './digest/digest.js';
export type { Digest, DigestRun } from './digest/digest.js';
export { renderDigestHtml } from './digest/html.js';
export { withPushRemote } from './config/deliver.js';

// Config, images, the model server, runs, Docker.
export { LoopboxError, ConfigError, ContainerError, ImageBuildError, DockerUnavailableError } from './common/errors.js';
export { isSafeName, newRunId } from './common/ids.js';
export { createLogger } from './common/logger.js';
export { stateDir, runDir } from './common/paths.js';
export { recordedConfig } from './loop/state.js';
export { packageVersion } from './common/version.js';
export { loadConfig, parseConfig, CONFIG_FILE } from './config/load.js';
export type { Config, ConfigInput } from './config/schema.js';
export { parseDuration } from './config/units.js';
export { VERIFY_PROFILES, initProject, verifyImageFor } from './config/init.js';
export { DockerClient, DockerApiError } from './docker/client.js';
export type { ContainerSpec, Bind, ManagedResource } from './docker/client.js';
export { LABELS, resourceLabels, managedFilter, containerName } from './docker/labels.js';
export { buildImages, imageStatus } from './images/builder.js';
export type { BuildImagesOptions, BuiltImage } from './images/builder.js';
export { IMAGE_NAMES, TOOLCHAINS, imageRef, toolchainImage } from './images/catalog.js';
export type { ImageName, Toolchain } from './images/catalog.js';
export { MODEL_CONTAINER, modelUp, modelDown, modelSlotUse, modelStatus } from './model/server.js';
export { ensureFixtureModel } from './model/fixture.js';
export { pullModel } from './model/pull.js';
export { MODEL_NETWORK, findModelServer } from './model/network.js';
export { gc, reapDeadRunContainers } from './runs/gc.js';
export type { GcOptions, GcResult } from './runs/gc.js';
export { createRun, finishRun, readRun, listRuns, isRunAlive } from './runs/registry.js';
export { doctor } from './doctor.js';
export { runDemo } from './demo/demo.js';

// Loops as Docker Swarm jobs (docs/scaling.md).
export { runOnSwarm, renderK8s, readRecord, SWARM_RECORD, swarmVerifierKey } from './cluster/submit.js';
export type { SwarmRunOptions, SwarmRecord } from './cluster/submit.js';
export { runJob, readJobEnv } from './cluster/job.js';
export { preflight as swarmPreflight, checkSwarm, labelledNodes } from './cluster/preflight.js';
export { k8sJobManifest, runnerServiceSpec, NODE_LABEL, NODE_LABEL_VALUE, PLACEMENT, SLOT_RESOURCE } from './cluster/spec.js';
export type { JobPlan } from './cluster/spec.js';
export { swarmLoops, stopSwarmLoops } from './cluster/status.js';
export type { SwarmLoopRow } from './cluster/status.js';
export { swarmModelUp, swarmModelDown } from './cluster/model.js';
export { keepModel, KEEPER_SERVICE } from './cluster/model.js';
export { printable } from './common/text.js';
