/** VMM drivers: one interface (boot, snapshot, restore, connect, destroy), two drivers. */
export * from './types.js';
export {
  QemuDriver,
  tcgKernelArgs,
  qemuArgs,
  ramFileArgs,
  BASE_KERNEL_ARGS,
  type QemuAccel,
  type QemuDriverOptions,
  type QemuMachine,
} from './qemu.js';
export { QmpClient, type QmpEvent } from './qmp.js';
export {
  JAIL_CONTROLLERS,
  JAIL_FAILED_EXIT,
  QEMU_DATA_FILES,
  QEMU_TCG_MODULE,
  QemuJail,
  buildJailHelper,
  cgroupPlan,
  cgroupVersion,
  jailArgv,
  jailDevices,
  jailLimits,
  parseLdd,
  qemuSupportFiles,
  resolveBinary,
  selfCgroups,
  sweepJails,
  type CgroupDir,
  type JailLimits,
  type JailPart,
  type JailSpec,
  type JailedVm,
  type PreparedJail,
  type QemuJailOptions,
} from './jail.js';
export { bootUnderKvm, probeKvm, type KvmProbeBoot, type KvmProbeResult } from './kvm.js';
export { parseVmmPidFile, vmmPidFile } from './base-vm.js';
export { TailBuffer } from './tail-buffer.js';
export * from './firecracker-api.js';
export * from './firecracker.js';
export {
  FIRECRACKER_FILES,
  firecrackerCommand,
  firecrackerLayout,
  firecrackerPath,
  jailerCgroupDirs,
  type FirecrackerCommand,
  type FirecrackerJailerOptions,
  type FirecrackerLayout,
} from './firecracker-jailer.js';
export { vsockConnect } from './vsock.js';
export {
  BACKPORTS_QEMU,
  RAM_TEMPLATE_MIN_QEMU,
  canRamTemplate,
  checkRamTemplateQemu,
  formatQemuVersion,
  parseQemuVersion,
  qemuAtLeast,
  qemuVersion,
  type QemuVersion,
} from './qemu-version.js';
