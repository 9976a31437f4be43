/**
 * The single-file executable (deploy/sea/build.mjs): built from dist/ with the Node.js 22 that
 * .ci/setup unpacks, then run with an empty environment (no node on PATH, nothing beside it):
 * docker mode end to end (fd 3, bytes, SIGINT), -v, standalone mode with its worker threads, and
 * the native engine picked up from build/Release next to the executable.
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, tcpRoundTrip } from '../helpers/net.js';
import { ROOT, startProxy, dockerArgv } from '../helpers/proxy.js';
import { killTracked } from '../helpers/processes.js';

const NODE22 = join(ROOT, '.cache/nodes/22/bin/node');
const node = existsSync(NODE22) ? NODE22 : process.execPath;
const dir = mkdtempSync(join(tmpdir(), 'upt-sea-'));
const exe = join(dir, 'userland-proxy');
let echo: Server;
let echoPort = 0;

beforeAll(async () => {
  execFileSync(process.execPath, [join(ROOT, 'deploy/sea/build.mjs'), '--node', node, '--out', exe], { stdio: 'pipe', timeout: 120_000 });
  echo = createServer((c) => {
    c.on('error', () => {});
    c.pipe(c);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = (echo.address() as { port: number }).port;
}, 150_000);
afterAll(async () => {
  await killTracked();
  echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

const dockerArgs = (port: number): string[] => dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', echoPort);

describe('single-file executable', () => {
  it('docker mode runs with an empty environment: status pipe, bytes, -v, SIGINT exit 0', async () => {
    expect(execFileSync(exe, ['-v'], { env: {} }).toString()).toMatch(/^userland-proxy version \d+\.\d+\.\d+ /);
    const port = await freePort();
    const p = await startProxy(dockerArgs(port), { bin: exe, cleanEnv: true, env: {} });
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('single file'))).toString()).toBe('single file');
    expect(await p.stop('SIGINT')).toEqual({ code: 0, signal: null });
    // Nothing beside it: the JavaScript engine, with the one warning.
    expect(p.stderr()).toContain('native engine unavailable');
  });

  it('standalone mode starts its worker threads from the embedded source', async () => {
    const [port, metrics] = [await freePort(), await freePort()];
    const child = spawn(exe, ['run', '-p', `127.0.0.1:${port}:127.0.0.1:${echoPort}`, '--metrics', `127.0.0.1:${metrics}`, '--engine', 'js'], {
      env: {},
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      await new Promise<void>((res, rej) => {
        let out = '';
        child.stdout.on('data', (d) => {
          out += d;
          if (out.includes('ready:')) res();
        });
        child.once('exit', (c) => rej(new Error(`exited ${c}`)));
      });
      expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('worker'))).toString()).toBe('worker');
      const body = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
      expect(body).toContain('userland_proxy_connections_accepted_total');
    } finally {
      const exited = new Promise((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });

  it.skipIf(!existsSync(join(ROOT, 'build/Release/engine.node')))('uses the native engine from build/Release beside it', async () => {
    mkdirSync(join(dir, 'build/Release'), { recursive: true });
    copyFileSync(join(ROOT, 'build/Release/engine.node'), join(dir, 'build/Release/engine.node'));
    const port = await freePort();
    const p = await startProxy(dockerArgs(port), { bin: exe, cleanEnv: true, env: { USERLAND_PROXY_ENGINE: 'native' } });
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.alloc(1 << 20, 3))).length).toBe(1 << 20);
    await p.stop();
    expect(p.stderr()).toContain('"engine":"native"');
  });
});
