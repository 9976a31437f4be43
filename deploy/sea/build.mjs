#!/usr/bin/env node
// Builds a single-file executable (Node.js single executable application) of userland-proxy:
// one file that needs no Node.js installation on the host, for docker mode (dockerd's
// userland-proxy-path) and standalone mode.
//   node deploy/sea/build.mjs [--node /path/to/node] [--out build/sea/userland-proxy]
// Needs `npm ci` (esbuild and postject are dev dependencies) and a built dist/. --node is the
// Node.js binary to embed (default: the one running this script; 20.12+ for node:sea).
// How: esbuild bundles dist/ into one CommonJS script (SEA runs only that) and the worker into
// an ES module carried as a string (workers then start from a data: URL; the worker uses
// top-level await, which CommonJS lacks); node --experimental-sea-config makes the blob;
// postject injects it into a copy of the node binary. The native engine is not embedded: the
// executable uses it when build/Release/engine.node sits in the executable's directory, else the
// JavaScript engine, with the usual one warning.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { build } from 'esbuild';

const root = resolve(dirname(new URL(import.meta.url).pathname), '../..');
const args = process.argv.slice(2);
const opt = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const node = resolve(opt('--node', process.execPath));
const out = resolve(opt('--out', join(root, 'build/sea/userland-proxy')));
const work = join(dirname(out), 'work');
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;

// import.meta.url has no meaning in a bundle: it becomes the executable's own file URL, so that
// paths relative to dist/ (the addon at ../build/Release) resolve next to the executable.
const prelude = `var __seaUrl = require('node:url').pathToFileURL(require('node:path').join(require('node:path').dirname(process.execPath), 'dist', 'cli.js')).href; globalThis.__USERLAND_PROXY_VERSION__ = ${JSON.stringify(version)};`;
const common = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'error',
  legalComments: 'none',
  define: { 'import.meta.url': '__seaUrl' },
  banner: { js: prelude },
};
// The worker is an ES module; bundled CommonJS dependencies (pino) find `require` here.
const worker = await build({
  ...common,
  format: 'esm',
  entryPoints: [join(root, 'dist/standalone/worker.js')],
  write: false,
  banner: { js: `import { createRequire as __seaCreateRequire } from 'node:module'; const require = __seaCreateRequire(process.execPath); ${prelude}` },
});
await build({
  ...common,
  entryPoints: [join(root, 'dist/cli.js')],
  outfile: join(work, 'main.cjs'),
  define: { ...common.define, __USERLAND_PROXY_WORKER_SOURCE__: JSON.stringify(worker.outputFiles[0].text) },
});
const config = { main: join(work, 'main.cjs'), output: join(work, 'sea.blob'), disableExperimentalSEAWarning: true, useCodeCache: false };
writeFileSync(join(work, 'sea-config.json'), JSON.stringify(config));
execFileSync(node, ['--experimental-sea-config', join(work, 'sea-config.json')], { stdio: 'inherit' });
copyFileSync(node, out);
chmodSync(out, 0o755);
const postject = join(root, 'node_modules/postject/dist/cli.js');
execFileSync(process.execPath, [postject, out, 'NODE_SEA_BLOB', config.output, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], {
  stdio: 'inherit',
});
rmSync(work, { recursive: true, force: true });
console.log(`single executable: ${out} (node ${execFileSync(node, ['--version']).toString().trim()}, ${version})`);
