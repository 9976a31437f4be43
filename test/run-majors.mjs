#!/usr/bin/env node
// Runs the suites again on every other supported Node.js major (22, 24 and 26, unpacked into
// .cache/nodes by .ci/setup): vitest itself and every proxy it spawns (through the launcher's
// USERLAND_PROXY_NODE) run on that major, on the JavaScript engine (the one made of Node). The
// main `vitest run` covers Node 20 and both engines.
//
// Node 26, the newest line, takes every suite that runs our JavaScript. Left out there, and on
// every major: node-versions (it crosses the majors itself, from the main run: docker mode on
// both engines, the relay and private-API suites, -use-listen-fd, UDP, a target's reset), the
// container image (it runs its own Node 22), the deploy validators (no Node), the private
// dockerds (dockerd-e2e, rootless-e2e: their part beyond docker-contract and shared-engine is
// dockerd's), the npm package (its file list and bin link) and the bench harness (a developer's
// tool, run on the Node that runs CI). Cases of the reference docker-proxy alone are made in the
// main run only (UPT_MAJOR_RERUN, helpers/proxy.ts).
//
// Node 22 and 24 lie inside the range that 20 and 26 bound: they take the suites of what moves
// between majors, the JavaScript data path (it re-wraps Node's socket handles and reads through
// private internals: src/core/node-internals.ts; libuv's report of a reset changed between 22
// and 24), the single-executable build (its API is per major) and the unit suites. The process
// models (docker-contract, differential, the shared engine, fd budget, standalone, reload,
// Prometheus) stand on public, stable APIs (child_process, worker_threads, signals, fds) that
// 20 and 26 both pass; on 22 and 24 they would cost about two minutes of each CI run.
// `node test/run-majors.mjs --all` gives 22 and 24 Node 26's suites too (before a release).
//
// A missing major is reported as skipped, loudly. Exit status: non-zero if any run failed.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const LEFT_OUT = [
  'test/integration/node-versions.test.ts',
  'test/deploy/container-image.test.ts',
  'test/deploy/deploy-files.test.ts',
  'test/deploy/deploy-tools.test.ts',
  'test/deploy/kubernetes.test.ts',
  'test/integration/dockerd-e2e.test.ts',
  'test/integration/rootless-e2e.test.ts',
  'test/deploy/npm-pack.test.ts',
  'test/integration/bench-smoke.test.ts',
];
/** Node 22's and 24's suites, besides test/unit: the JavaScript data path and the single executable. */
const BETWEEN = [
  'test/integration/relay.test.ts',
  'test/integration/tcp-forward.test.ts',
  'test/integration/udp-forward.test.ts',
  'test/integration/faults.test.ts',
  'test/integration/tcp-timeouts.test.ts',
  'test/integration/proxy-protocol.test.ts',
  'test/integration/access.test.ts',
  'test/integration/time-wait.test.ts',
  'test/integration/soak.test.ts',
  'test/deploy/sea.test.ts',
];
// The files themselves, not --exclude: the project's own exclude list replaces a command-line one.
const files = ['test/unit', 'test/integration', 'test/deploy']
  .flatMap((dir) => readdirSync(join(root, dir)).map((f) => `${dir}/${f}`))
  .filter((f) => f.endsWith('.test.ts') && !LEFT_OUT.includes(f));
for (const f of BETWEEN) if (!files.includes(f)) throw new Error(`run-majors.mjs: ${f} is not a suite`);
const ALL = process.argv.includes('--all');
/** The suites of `major`. */
const suitesOf = (major) => (major === '26' || ALL ? files : files.filter((f) => f.startsWith('test/unit/') || BETWEEN.includes(f)));
let failed = 0;
for (const major of ['22', '24', '26']) {
  const node = join(root, '.cache/nodes', major, 'bin/node');
  if (!existsSync(node)) {
    console.warn(`SKIPPED: Node.js ${major} is not in .cache/nodes (bash .ci/setup fetches it)`);
    continue;
  }
  console.log(`\n=== the suites on Node.js ${major} ===`);
  const r = spawnSync(node, [join(root, 'node_modules/vitest/vitest.mjs'), 'run', '--project', 'unit', '--project', 'js', ...suitesOf(major)], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, USERLAND_PROXY_NODE: node, UPT_MAJOR_RERUN: major },
  });
  if (r.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
