// Builds the native engine during `npm ci` / `npm install` (the package's install script).
// Offline-safe: it uses the node-gyp bundled with npm (npm_config_node_gyp), never `npx`, and
// points node-gyp at the headers installed next to this node binary (nodedir), so nothing is
// downloaded. A failed build is not an error: the proxy then runs on the JavaScript engine and
// says so once at startup. USERLAND_PROXY_SKIP_NATIVE_BUILD=1 skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const root = join(dirname(new URL(import.meta.url).pathname), '..');
if (process.env.USERLAND_PROXY_SKIP_NATIVE_BUILD === '1') {
  console.warn('userland-proxy: native engine build skipped (USERLAND_PROXY_SKIP_NATIVE_BUILD=1)');
  process.exit(0);
}

function nodeGyp() {
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) return process.env.npm_config_node_gyp;
  // Outside npm: the copy bundled with the npm next to this node.
  const npmDir = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm');
  try {
    return createRequire(join(npmDir, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    return null;
  }
}

const gyp = nodeGyp();
const prefix = join(dirname(process.execPath), '..');
const args = ['rebuild', '--release', '--loglevel=error'];
if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
const result =
  gyp === null
    ? { status: 1, stderr: 'node-gyp not found' }
    : spawnSync(process.execPath, [gyp, ...args], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
if (result.status === 0 && existsSync(join(root, 'build', 'Release', 'engine.node'))) {
  console.log('userland-proxy: native engine built (build/Release/engine.node)');
} else {
  const why =
    String(result.stderr ?? result.error ?? '')
      .trim()
      .split('\n')
      .filter(Boolean)
      .slice(-1)[0] ?? 'unknown error';
  console.warn(`userland-proxy: native engine not built (${why}); the JavaScript engine will be used`);
}
