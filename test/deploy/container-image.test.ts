/**
 * deploy/container/Dockerfile, built and run by a private dockerd. No registry is reachable here,
 * so the node:22 images are stood in for by a base made from local files (busybox-static, the
 * Node.js 22 that .ci/setup unpacks, this host's npm, their shared libraries, a `node` user with uid 1000 as in the
 * official images). That base has no compiler, so the image runs the JavaScript engine: the
 * no-compiler path of `npm ci`. The build itself (`npm ci` from the registry, prune, the two
 * stages) is the real one. Checked: non-root, production dependencies only, the HEALTHCHECK turns
 * healthy, a mapping forwards with host networking, and `docker stop` drains and exits 0.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAN_RUN_DOCKERD, startDockerd, type PrivateDockerd } from '../helpers/dockerd.js';
import { freePort, sleep, tcpRoundTrip } from '../helpers/net.js';
import { ROOT } from '../helpers/proxy.js';
import { get, sample } from '../helpers/standalone.js';

const NODE22 = join(ROOT, '.cache/nodes/22');
const CAN = CAN_RUN_DOCKERD && existsSync('/bin/busybox') && existsSync(join(NODE22, 'bin/node'));
const BASE = 'upt-node-base:22';
const IMAGE = 'upt-userland-proxy:test';
const CA_FILE = '/etc/ssl/certs/ca-certificates.crt';
let d: PrivateDockerd | null = null;
let echo: Server;
let built = { code: 1, stderr: '', stdout: '' };

/** A root filesystem with busybox, Node.js 22 and npm in /usr/local, and their libraries. */
function makeBaseRootfs(rootfs: string): void {
  for (const p of ['bin', 'etc', 'tmp', 'root', 'home/node', 'usr/bin', 'usr/local/bin', 'usr/local/lib']) mkdirSync(join(rootfs, p), { recursive: true });
  chmodSync(join(rootfs, 'tmp'), 0o1777);
  copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'ls', 'id', 'cat', 'mkdir', 'rm', 'find', 'env', 'sleep', 'ps']) symlinkSync('busybox', join(rootfs, 'bin', a));
  symlinkSync('/bin/busybox', join(rootfs, 'usr/bin/env')); // npm's #!/usr/bin/env node
  copyFileSync(join(NODE22, 'bin/node'), join(rootfs, 'usr/local/bin/node'));
  // The npm package from .ci/setup carries node alone; npm is this host's (it runs on Node 22).
  const npm = join(execFileSync('npm', ['root', '-g'], { encoding: 'utf8' }).trim(), 'npm');
  cpSync(npm, join(rootfs, 'usr/local/lib/node_modules/npm'), { recursive: true });
  symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', join(rootfs, 'usr/local/bin/npm'));
  // The dynamic libraries node needs, at the same paths (ldd prints "name => /path (addr)").
  const libs = execFileSync('ldd', [join(NODE22, 'bin/node')], { encoding: 'utf8' }).match(/\/\S+/g) ?? [];
  for (const lib of new Set(libs)) {
    mkdirSync(join(rootfs, dirname(lib)), { recursive: true });
    copyFileSync(lib, join(rootfs, lib));
  }
  writeFileSync(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n');
  writeFileSync(join(rootfs, 'etc/group'), 'root:x:0:\nnode:x:1000:\n');
  execFileSync('chown', ['1000:1000', join(rootfs, 'home/node')]);
  // This host's trust store: the registry may be reached through a TLS-inspecting proxy whose CA
  // only the host trusts (a site's own base image would carry it the same way).
  mkdirSync(join(rootfs, 'etc/ssl/certs'), { recursive: true });
  if (existsSync(CA_FILE)) copyFileSync(CA_FILE, join(rootfs, CA_FILE));
}

beforeAll(async () => {
  if (!CAN) {
    console.warn('SKIPPED: the container image test needs root, docker.io, busybox-static and .cache/nodes/22 (.ci/setup)');
    return;
  }
  echo = createServer((c) => {
    c.on('error', () => {});
    c.pipe(c);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  // No bridge: the image runs with host networking only (and two test dockerds never clash).
  d = await startDockerd(['--bridge', 'none'], { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' });
  const rootfs = join(d.dir, 'base');
  makeBaseRootfs(rootfs);
  execFileSync('tar', ['-C', rootfs, '-cf', join(d.dir, 'base.tar'), '.']);
  const imp = await d.docker(
    ['import', '--change', `ENV npm_config_cafile=${CA_FILE}`, '--change', `ENV NODE_EXTRA_CA_CERTS=${CA_FILE}`, join(d.dir, 'base.tar'), BASE],
    120,
  );
  if (imp.code !== 0) throw new Error(`docker import failed: ${imp.stderr}`);
  // --network host: the build stage's `npm ci` reaches the npm registry as the host does.
  built = await d.docker(
    [
      'build',
      '--network',
      'host',
      '--build-arg',
      `NODE_IMAGE=${BASE}`,
      '--build-arg',
      `NODE_RUNTIME_IMAGE=${BASE}`,
      '-f',
      join(ROOT, 'deploy/container/Dockerfile'),
      '-t',
      IMAGE,
      ROOT,
    ],
    540,
  );
}, 600_000);

afterAll(async () => {
  if (d) {
    await d.docker(['rm', '-f', 'upt-up']);
    await d.stop();
  }
  echo?.close();
}, 60_000);

describe.skipIf(!CAN)('container image (deploy/container/Dockerfile)', () => {
  it('builds in two stages; the image runs as node (uid 1000) with a HEALTHCHECK and production dependencies only', async () => {
    // vitest cuts long assertion messages: print the build's tail when it failed.
    if (built.code !== 0) console.log(built.stdout.slice(-4000), built.stderr.slice(-4000));
    expect(built.code).toBe(0);
    const dk = d as PrivateDockerd;
    const cfg = JSON.parse((await dk.docker(['image', 'inspect', '--format', '{{json .Config}}', IMAGE])).stdout) as {
      User: string;
      Entrypoint: string[];
      Cmd: string[];
      Healthcheck: { Test: string[] };
      Env: string[];
    };
    expect(cfg.User).toBe('node');
    expect(cfg.Entrypoint).toEqual(['/opt/userland-proxy/bin/userland-proxy']);
    expect(cfg.Cmd).toEqual(['run']);
    expect(cfg.Healthcheck.Test).toEqual(['CMD', 'node', '/opt/userland-proxy/healthcheck.mjs']);
    // Packages, not directories: npm prune leaves empty scope directories behind.
    const listed = await dk.docker([
      'run',
      '--rm',
      '--entrypoint',
      '/bin/sh',
      IMAGE,
      '-c',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion, not a template
      'cd /opt/userland-proxy/node_modules && for p in */package.json @*/*/package.json; do [ -f "$p" ] && echo "${p%/package.json}"; done',
    ]);
    const mods = listed.stdout.split('\n').filter(Boolean);
    for (const dep of ['yargs', 'pino', 'prom-client']) expect(mods).toContain(dep);
    for (const dev of ['typescript', 'vitest', 'autocannon', 'fast-check', '@types/node', 'esbuild', 'kubernetes-models']) expect(mods).not.toContain(dev);
    // No compiler in the stand-in base: npm ci succeeded without the addon (the engine falls
    // back to JavaScript; the next test sees the warning).
    expect((await dk.docker(['run', '--rm', '--entrypoint', '/bin/ls', IMAGE, '/opt/userland-proxy/build/Release'])).stdout.trim()).toBe('');
  }, 60_000);

  it('runs with host networking: healthy, forwards a mapping, and stops cleanly on docker stop', async () => {
    const dk = d as PrivateDockerd;
    const [port, metrics] = [await freePort(), await freePort()];
    const conf = join(dk.dir, 'conf');
    mkdirSync(conf, { mode: 0o755 });
    chmodSync(dk.dir, 0o755);
    writeFileSync(join(conf, 'config.json'), JSON.stringify({ publish: [`127.0.0.1:${port}:127.0.0.1:${(echo.address() as { port: number }).port}`] }), {
      mode: 0o644,
    });
    const r = await dk.docker([
      'run',
      '-d',
      '--name',
      'upt-up',
      '--network',
      'host',
      '-v',
      `${conf}:/etc/userland-proxy:ro`,
      '-e',
      `USERLAND_PROXY_METRICS=127.0.0.1:${metrics}`,
      '--health-interval',
      '1s',
      '--health-start-period',
      '1s',
      IMAGE,
    ]);
    expect(r.code, r.stderr).toBe(0);
    let health = '';
    for (let i = 0; i < 40 && health !== 'healthy'; i++) {
      await sleep(500);
      health = (await dk.docker(['inspect', '--format', '{{.State.Health.Status}}', 'upt-up'])).stdout.trim();
    }
    expect(health, (await dk.docker(['logs', 'upt-up'])).stderr).toBe('healthy');
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('through the container'))).toString()).toBe('through the container');
    const text = (await get(`http://127.0.0.1:${metrics}/metrics`)).body;
    expect(sample(text, 'userland_proxy_connections_accepted_total', { mapping: `tcp/127.0.0.1:${port}` })).toBe(1);
    expect((await dk.docker(['exec', 'upt-up', 'id', '-u'])).stdout.trim()).toBe('1000');
    expect((await dk.docker(['logs', 'upt-up'])).stderr).toContain('native engine unavailable');
    const stop = await dk.docker(['stop', 'upt-up']);
    expect(stop.code).toBe(0);
    expect((await dk.docker(['inspect', '--format', '{{.State.ExitCode}}', 'upt-up'])).stdout.trim()).toBe('0');
  }, 60_000);
});
