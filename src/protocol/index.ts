/** The guest protocol, shared by host and agent: frames, message schemas, a typed channel. */
export * from './frame.js';
export * from './messages.js';
export * from './channel.js';
export * from './rules.js';
