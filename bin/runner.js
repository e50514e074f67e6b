#!/usr/bin/env node
// The `runner` CLI. Runs the compiled tree when `npm run build` has made one, and the
// TypeScript sources through tsx otherwise, so that `npx runner` works right after `npm ci`.
import { existsSync } from 'node:fs';

// `runner ... | head` closes the pipe early: that is not an error.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

const built = new URL('../dist/cli/main.js', import.meta.url);
if (existsSync(built) && !process.env.RUNNER_FROM_SOURCE) {
  const { main } = await import(built.href);
  await main();
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import(new URL('../src/cli/main.ts', import.meta.url).href);
  await main();
}
