#!/usr/bin/env node
// Runs the suites again on every other supported Node.js major (22, 24 and 26, unpacked into
// .cache/nodes by .ci/setup): vitest itself and every proxy it spawns (through the launcher's
// USERLAND_PROXY_NODE) run on that major. The main `vitest run` covers Node 20 and both engines.
// Left out here: node-versions (it crosses the majors itself, from the main run), the container
// image (it builds and runs an image with its own Node 22, whatever runs the test), the deploy
// validators (systemd, Prometheus, Kubernetes, Grafana files: none runs on Node), and the private
// dockerds (dockerd-e2e, rootless-e2e: what they add to docker-contract and shared-engine, which
// run here, is dockerd's side of the contract, the same whatever Node runs the proxy), the npm
// package (its file list and bin link; what it runs is the launcher and dist/ every suite here
// runs) and the bench harness (a developer's tool, run on the Node that runs CI). Cases of the
// reference docker-proxy alone are made in the main run only (UPT_MAJOR_RERUN, helpers/proxy.ts).
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
// The files themselves, not --exclude: the project's own exclude list replaces a command-line one.
const files = ['test/unit', 'test/integration', 'test/deploy']
  .flatMap((dir) => readdirSync(join(root, dir)).map((f) => `${dir}/${f}`))
  .filter((f) => f.endsWith('.test.ts') && !LEFT_OUT.includes(f));
let failed = 0;
for (const major of ['22', '24', '26']) {
  const node = join(root, '.cache/nodes', major, 'bin/node');
  if (!existsSync(node)) {
    console.warn(`SKIPPED: Node.js ${major} is not in .cache/nodes (bash .ci/setup fetches it)`);
    continue;
  }
  console.log(`\n=== the suites on Node.js ${major} ===`);
  const r = spawnSync(node, [join(root, 'node_modules/vitest/vitest.mjs'), 'run', '--project', 'unit', '--project', 'js', ...files], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, USERLAND_PROXY_NODE: node, UPT_MAJOR_RERUN: major },
  });
  if (r.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
