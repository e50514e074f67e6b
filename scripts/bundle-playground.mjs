// Bundles the playground's browser code (src/playground/web/main.ts, with CodeMirror) into one
// script, and copies its page and style next to it. Usage:
//   node scripts/bundle-playground.mjs [OUTDIR]   (default dist/playground/web)
// `runner serve` from source runs this itself into <data dir>/build/playground/<key>/.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const web = `${root}src/playground/web`;
const outdir = process.argv[2] ?? `${root}dist/playground/web`;

mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: [`${web}/main.ts`],
  outfile: `${outdir}/main.js`,
  bundle: true,
  platform: 'browser',
  target: 'es2020',
  format: 'esm',
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
});
for (const f of ['index.html', 'style.css']) copyFileSync(`${web}/${f}`, `${outdir}/${f}`);
process.stdout.write(`${outdir}\n`);
