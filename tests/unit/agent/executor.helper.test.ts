import { defineExecutorSuite } from './executor-suite.js';

// How the guest runs stages: one exec of the static runner-exec (built here with gcc), a cgroup
// v2 per stage (skipped, saying why, where gcc or a cgroup v2 hierarchy is missing).
defineExecutorSuite('helper', 60900);
