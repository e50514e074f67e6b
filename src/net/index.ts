/**
 * The service's network rules: the egress policy of requests made on a user's behalf
 * (callbacks), and the per-VM network of jobs that ask for one. A plain list of re-exports.
 */
export * from './egress.js';
export * from './vmnet.js';
