import { defineExecutorSuite } from './executor-suite.js';

// No cgroups: rlimits, CPU time from /proc, and a sweep of the job's uid at stage end.
defineExecutorSuite('fallback', 60600);
