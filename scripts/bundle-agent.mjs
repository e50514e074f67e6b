// Bundles the guest agent into one ES module file that runs on Debian's Node.js 18 (the
// guest's). Usage: node scripts/bundle-agent.mjs [OUTFILE]   (default dist/agent/agent.mjs)
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outfile = process.argv[2] ?? `${root}dist/agent/agent.mjs`;

await build({
  entryPoints: [`${root}src/agent/main.ts`],
  outfile,
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'esm',
  minify: false,
  sourcemap: false,
  legalComments: 'none',
  banner: {
    js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
  },
  logLevel: 'warning',
});
process.stdout.write(`${outfile}\n`);
