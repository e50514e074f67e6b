/**
 * The guest agent: runs inside each microVM, speaks the guest protocol to the host, and runs
 * jobs under limits. `main.ts` is its entry point (bundled to dist/agent/agent.mjs).
 */
export {
  Executor,
  checkLimits,
  expandCommand,
  findExecutable,
  findSandboxTools,
  JOB_PATH,
  RESERVED_ENV,
  type ExecutorOptions,
  REQUEST_CODES,
  type ExecutorJob,
  type ExecutorOutcome,
} from './executor.js';
export {
  copyWorkDir,
  createWorkDir,
  fileBytes,
  removeWorkDir,
  wipeScratch,
  writeJobFiles,
  type FileOwner,
} from './files.js';
export { probeCgroup, StageCgroup, type CgroupSupport, type CgroupLimits } from './cgroup.js';
export {
  runStage,
  buildStageArgv,
  sandboxErrorResult,
  DEFAULT_STAGE_TIMINGS,
  type StageSandbox,
  type StageSpec,
  type OutputBudget,
  type StageTimings,
} from './stage.js';
export { killAllOfUid, listProcessesOfUid, type SandboxTools } from './proc.js';
export { ReseedServer, SystemGuestActions, type GuestActions } from './guest.js';
export { AgentServer, fitResult, type AgentServerOptions, type JobExecutor } from './server.js';
export { UnixTransport, SerialTransport, type Transport, type SerialOptions } from './transport.js';
export { parseAgentArgs, startAgent, USAGE, type AgentCliOptions } from './main.js';
