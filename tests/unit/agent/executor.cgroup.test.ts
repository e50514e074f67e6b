import { defineExecutorSuite } from './executor-suite.js';

// A cgroup v2 per stage (skipped, saying why, where no cgroup v2 hierarchy is usable).
defineExecutorSuite('cgroup', 60300);
