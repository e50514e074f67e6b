#!/usr/bin/env node
// The `runner` CLI. Runs the compiled tree when `npm run build` has made one, and the
// TypeScript sources through tsx otherwise, so that `npx runner` works right after `npm ci`.
import { existsSync } from 'node:fs';

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
