/**
 * The agent and project version. Part of every rootfs image's identity: bump it when the agent
 * changes in a way the host must know about (the image builder also hashes the bundle itself).
 */
export const AGENT_VERSION = '0.1.0';
