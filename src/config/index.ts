/**
 * Configuration: the one settings table (validated, deeply frozen, documented), the data
 * paths derived from it, and the job limits with their defaults and server maxima.
 */
export * from './settings.js';
export * from './paths.js';
export * from './limits.js';
