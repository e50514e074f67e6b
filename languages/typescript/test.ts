// Node's own modules type-check: require, an ES import of node:fs, process and Buffer.
const os = require('os');
import { existsSync } from 'node:fs';
const lang: string = 'typescript';
const line: string[] = ['runner-test:', lang, 'ok'];
if (typeof os.cpus === 'function' && existsSync('/') && process.argv.length > 0)
  process.stdout.write(Buffer.from(line.join(' ') + '\n'));
