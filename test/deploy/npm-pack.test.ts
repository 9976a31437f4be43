/**
 * Install path: `npm pack` produces a package that `npm install -g` installs and that runs, in
 * both modes, through the global bin symlink (the launcher resolves it) with a minimal PATH.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, tcpRoundTrip } from '../helpers/net.js';
import { ROOT, startProxy, dockerArgv } from '../helpers/proxy.js';
import { RUN_ENGINE_SOCKET } from '../helpers/shared-engines.js';
import { createServer } from 'node:net';

const run = promisify(execFile);
/** With a compiler (as after .ci/setup), installing builds the native engine; it is then forced. */
const HAVE_CC = existsSync('/usr/bin/gcc') && existsSync('/usr/bin/make');
const dir = mkdtempSync(join(tmpdir(), 'upt-pack-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npm pack and npm install -g', () => {
  it('the packed package installs globally and runs in docker and standalone mode', async () => {
    // --ignore-scripts: dist/ is already built by npm test; rebuilding it here would race the other suites.
    await run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: ROOT, timeout: 120_000 });
    const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz')) as string;
    expect(tgz).toMatch(/^userland-proxy-\d+\.\d+\.\d+\.tgz$/);
    const { stdout: files } = await run('tar', ['tzf', join(dir, tgz)]);
    expect(files).toContain('package/bin/userland-proxy');
    expect(files).toContain('package/dist/cli.js');
    expect(files).not.toContain('package/test/');
    // The native engine's source travels in the package and is built on install.
    for (const f of ['engine.h', 'binding.c', 'control.c', 'loop.c', 'tcp.c', 'udp.c', 'shim.c']) expect(files).toContain(`package/native/${f}`);
    expect(files).toContain('package/binding.gyp');
    expect(files).not.toContain('package/build/');
    await run('npm', ['install', '-g', '--prefix', join(dir, 'global'), join(dir, tgz), '--no-audit', '--no-fund'], { timeout: 120_000 });
    const bin = join(dir, 'global/bin/userland-proxy');
    const env = { PATH: '/usr/bin:/bin' };
    expect((await run(bin, ['-v'], { env })).stdout).toMatch(/^userland-proxy version \d/);
    expect((await run(bin, ['check', '-p', '8080:10.0.0.2:80'], { env })).stdout).toContain('tcp/0.0.0.0:8080 -> 10.0.0.2:80');
    const echo = createServer((c) => c.pipe(c));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const port = await freePort();
    const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', (echo.address() as { port: number }).port), {
      bin,
      cleanEnv: true,
      // The shared engine it starts is this run's (killed at the end), under a name of its own.
      env: { ...env, USERLAND_PROXY_ENGINE: HAVE_CC ? 'native' : 'auto', USERLAND_PROXY_ENGINE_SOCKET: `${RUN_ENGINE_SOCKET}-pack` },
    });
    // Built with a compiler, the global install runs shared mode: the proxy is the shim.
    expect(readlinkSync(`/proc/${p.pid}/exe`).endsWith('/build/Release/userland-proxy-shim')).toBe(HAVE_CC);
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('packed'))).toString()).toBe('packed');
    await p.stop();
    echo.close();
  }, 200_000);
});
