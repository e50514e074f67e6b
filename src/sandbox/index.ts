/**
 * Sandboxes kept across calls: a VM held for one client, with code cells whose interpreter
 * stays alive, files, commands, pause (to disk) and resume, fork and kill. One engine
 * (`SandboxManager`); the native API, the E2B adapter and the CLI are translations onto it.
 */
export * from './types.js';
export { SandboxManager, newSandboxId, type SandboxManagerOptions } from './manager.js';
export { sandboxPath } from './files.js';
