/**
 * The service's network rules: the egress policy of requests made on a user's behalf
 * (callbacks). A plain list of re-exports, one line per module.
 */
export * from './egress.js';
