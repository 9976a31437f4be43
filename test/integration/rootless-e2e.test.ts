/**
 * Rootless Docker 28.5 end to end (RootlessKit 2.0.2, slirp4netns, the builtin port driver), with
 * userland-proxy installed by deploy/docker/install.sh as the rootless dockerd's proxy, and with
 * the reference docker-proxy 28.5 under the same kind of daemon (js project; ours runs on the
 * default engine, in the native project), so that every case proves itself on it. A user of this
 * test's own runs dockerd-rootless.sh; dockerd binds each port in RootlessKit's namespace, asks
 * RootlessKit to forward the host's port to it, and runs the proxy there with -use-listen-fd.
 * Everything made (the user, its /dev/net/tun ACL entry, the daemon, its processes and files) is
 * removed in afterAll, also on failure.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, statSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildTestImage, createRootlessUser, rootlessMissing, startRootlessDockerd, type RootlessDockerd, type RootlessUser } from '../helpers/dockerd.js';
import { testEngine } from '../helpers/data-path.js';
import { freePort, sleep, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { enginePids, killEngines, RUN_ENGINE_SOCKET } from '../helpers/shared-engines.js';
import { proxiesOf } from '../helpers/testbed.mjs';
import { createServer, type AddressInfo } from 'node:net';
import { dockerArgv, REF_PROXIES, ROOT, startProxy } from '../helpers/proxy.js';

const MISSING = rootlessMissing();
if (MISSING) console.warn(`SKIPPED: rootless Docker 28.5 e2e: ${MISSING}`);
const IMAGE = 'upt-busybox';
/** World-readable: the install and the image are read by the rootless user. */
const dir = MISSING ? '' : mkdtempSync('/tmp/upt-rl-e2e-');
let user: RootlessUser | null = null;

beforeAll(() => {
  if (MISSING) return;
  chmodSync(dir, 0o755);
  buildTestImage(dir);
  execFileSync('sh', [join(ROOT, 'deploy/docker/install.sh'), join(dir, 'opt')], {
    stdio: 'ignore',
    env: { ...process.env, USERLAND_PROXY_ENGINE_SOCKET: 'upt-rl-install' },
  });
  user = createRootlessUser(`uptrl${process.pid % 100000}`);
}, 90_000);

afterAll(() => {
  user?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Engines (dist/cli.js engine) running now: pid, uid and network namespace. */
const engines = (): { pid: number; uid: number; netns: string }[] =>
  readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        if (!args.some((a) => a.endsWith('/dist/cli.js')) || !args.includes('engine')) return [];
        return [{ pid: Number(d), uid: statSync(`/proc/${d}`).uid, netns: readlinkSync(`/proc/${d}/ns/net`) }];
      } catch {
        return [];
      }
    });
const serves = async (url: string): Promise<boolean> => {
  try {
    return (await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text()) === 'hello from the container\n';
  } catch {
    return false;
  }
};

/** Root's engine of this test's own name, beside the rootless daemon. */
const ROOTFUL_ENGINE = `${RUN_ENGINE_SOCKET}-rootful`;
interface RootfulEngine {
  pids: number[];
  port: number;
  stop(): Promise<void>;
}

// Ours on the default engine (native project), the reference in the js project (as dockerd-e2e).
const RUNS = testEngine() === 'js' ? [{ mode: 'the reference docker-proxy 28.5', ours: false }] : [{ mode: 'userland-proxy (shared engine)', ours: true }];

describe.each(RUNS.filter(() => !MISSING))('rootless dockerd 28.5 with $mode', ({ ours }) => {
  let dockerd: RootlessDockerd | null = null;
  /** The proxies the rootless dockerd started for a host port. */
  const proxiesFor = (port: number) => proxiesOf((dockerd as RootlessDockerd).pid(), port);
  const docker = (...args: string[]) => (dockerd as RootlessDockerd).docker(args, 60);
  let rootful: RootfulEngine | null = null;

  beforeAll(async () => {
    // Root's own shared engine (a name of this test's), serving a port: the rootless one must
    // leave it alone.
    if (ours) {
      const echo = createServer((c) => c.pipe(c)).listen(0, '127.0.0.1');
      await new Promise((res) => echo.once('listening', res));
      const port = await freePort();
      const proxy = await startProxy(dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', (echo.address() as AddressInfo).port), {
        env: { USERLAND_PROXY_ENGINE_SOCKET: ROOTFUL_ENGINE },
      });
      rootful = {
        pids: enginePids(ROOTFUL_ENGINE),
        port,
        stop: async () => {
          await proxy.stop();
          killEngines(ROOTFUL_ENGINE);
          echo.close();
        },
      };
    }
    dockerd = await startRootlessDockerd(user as RootlessUser, ['--userland-proxy-path', ours ? join(dir, 'opt/bin/userland-proxy') : REF_PROXIES['28.5']], {
      USERLAND_PROXY_ENGINE: testEngine(),
    });
    const imp = await docker('import', join(dir, 'rootfs.tar'), IMAGE);
    if (imp.code !== 0) throw new Error(`docker import failed: ${imp.stderr}`);
  }, 120_000);
  afterAll(async () => {
    await dockerd?.stop();
    await rootful?.stop();
  }, 60_000);

  it('serves TCP on 127.0.0.1 and UDP on every address, in RootlessKit namespace, as the rootless user; docker stop frees the ports', async () => {
    const [tport, uport] = [await freePort(), await freePort()];
    const r = await docker(
      'run',
      '-d',
      '--name',
      'upt-rl-web',
      '-p',
      `127.0.0.1:${tport}:80`,
      '-p',
      `${uport}:53/udp`,
      IMAGE,
      '/bin/sh',
      '-c',
      'httpd -p 80 -h /www; exec udpecho 53',
    );
    expect(r.code, r.stderr).toBe(0);
    await vi.waitFor(async () => expect(await serves(`http://127.0.0.1:${tport}/`)).toBe(true), { timeout: 10_000, interval: 100 });
    const u = udpClient(4);
    await vi.waitFor(async () => expect((await udpRequest(u, '127.0.0.1', uport, 'rootless udp', 500)).toString()).toBe('rootless udp'), {
      timeout: 10_000,
      interval: 100,
    });
    u.close();
    // dockerd ran each proxy with the port it bound in the namespace, as the rootless user.
    const proxies = [...proxiesFor(tport), ...proxiesFor(uport)];
    expect(proxies.length).toBeGreaterThanOrEqual(2);
    for (const { args, uid } of proxies) {
      expect(args, args).toContain(' -use-listen-fd');
      expect(uid, args).toBe((user as RootlessUser).uid);
      if (ours) expect(args, args).toContain(join(dir, 'opt/bin/userland-proxy'));
    }
    if (ours) {
      // One engine, the rootless user's, in dockerd's network namespace (not the host's), and
      // none of root's there; root's own engine (started before) serves on, the same process.
      const nsOfDockerd = readlinkSync(`/proc/${(dockerd as RootlessDockerd).pid()}/ns/net`);
      const mine = engines().filter((e) => e.uid === (user as RootlessUser).uid);
      expect(mine.map((e) => e.netns)).toEqual([nsOfDockerd]);
      expect(nsOfDockerd).not.toBe(readlinkSync('/proc/self/ns/net'));
      expect(engines().filter((e) => e.uid === 0 && e.netns === nsOfDockerd)).toEqual([]);
      const { pids, port } = rootful as RootfulEngine;
      expect(enginePids(ROOTFUL_ENGINE)).toEqual(pids);
      expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('rootful'))).toString()).toBe('rootful');
    }
    const stop = await docker('stop', '-t', '1', 'upt-rl-web');
    expect(stop.code, stop.stderr).toBe(0);
    await vi.waitFor(() => expect([...proxiesFor(tport), ...proxiesFor(uport)]).toEqual([]), { timeout: 5000, interval: 100 });
    expect(await serves(`http://127.0.0.1:${tport}/`)).toBe(false);
    // The port is free for the next container at once.
    const again = await docker('run', '-d', '--name', 'upt-rl-again', '-p', `127.0.0.1:${tport}:80`, IMAGE, '/bin/sh', '-c', 'exec httpd -f -p 80 -h /www');
    expect(again.code, again.stderr).toBe(0);
    await vi.waitFor(async () => expect(await serves(`http://127.0.0.1:${tport}/`)).toBe(true), { timeout: 10_000, interval: 100 });
    await docker('rm', '-f', 'upt-rl-again');
  }, 90_000);

  it('a 20-port range: run and stop (times printed for the closing note, not asserted), one engine for them all', async () => {
    const base = await freePort('127.0.0.1', 20);
    const t0 = Date.now();
    const r = await docker('run', '-d', '--name', 'upt-rl-range', '-p', `127.0.0.1:${base}-${base + 19}:8000-8019`, IMAGE, '/bin/sleep', '3600');
    const runMs = Date.now() - t0;
    expect(r.code, r.stderr).toBe(0);
    const ports = Array.from({ length: 20 }, (_, i) => base + i);
    expect(ports.map((p) => proxiesFor(p).length)).toEqual(ports.map(() => 1));
    if (ours) expect(engines().filter((e) => e.uid === (user as RootlessUser).uid)).toHaveLength(1);
    const t1 = Date.now();
    const stop = await docker('stop', '-t', '0', 'upt-rl-range');
    const stopMs = Date.now() - t1;
    expect(stop.code, stop.stderr).toBe(0);
    await vi.waitFor(() => expect(ports.flatMap(proxiesFor)).toEqual([]), { timeout: 5000, interval: 100 });
    console.log(
      `rootless 28.5, ${ours ? `userland-proxy (${testEngine()})` : 'docker-proxy 28.5'}: docker run -p (20 ports) ${runMs} ms, docker stop ${stopMs} ms`,
    );
    await docker('rm', '-f', 'upt-rl-range');
    await sleep(100);
  }, 90_000);
});
