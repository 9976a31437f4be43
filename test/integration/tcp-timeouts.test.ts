/**
 * TCP timeouts through the real forwarder in-process (real loopback sockets, short timeouts):
 * idle connections close, busy ones stay; half-closed connections that stay idle close after the
 * linger timeout; a dial into a namespace that drops SYNs gives up after the connect timeout; a
 * refused or timed-out dial is logged with the same line on both engines.
 * Forced closes of stalled (not idle) connections, through spawned proxies: idle and linger
 * timeouts, SIGTERM and the drain timeout reset a connection that still holds bytes, never end it
 * with a clean FIN (audit M1).
 */
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, beforeAll, afterAll, describe, expect, it, vi } from 'vitest';
import type { TcpForwarder } from '../../src/data-path/tcp-forwarder.js';
import type { TcpForwarderOptions } from '../../src/data-path/tcp-types.js';
import { IS_ROOT, useBackend } from '../helpers/netns.js';
import { freePort, readToClose, sleep, tcpConnect } from '../helpers/net.js';
import { ROOT, startProxy, dockerArgv } from '../helpers/proxy.js';
import { startStandalone } from '../helpers/standalone.js';
import { closeForwarders, startTcpForwarder } from '../helpers/data-path.js';
import { killTracked } from '../helpers/processes.js';
import { recorder, warned } from '../helpers/log.js';

let echo: Server;
let silent: Server;
const held: Socket[] = [];

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    c.pipe(c);
  });
  // A target that reads but never closes its side, even after the client's FIN.
  silent = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    c.resume();
    held.push(c);
  });
  await Promise.all([echo, silent].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))));
});
afterAll(() => {
  echo.close();
  silent.close();
  for (const c of held) c.destroy();
});
afterEach(closeForwarders);

async function forward(
  target: Server | { address: string; port: number; family: 4 | 6 },
  opts: Partial<TcpForwarderOptions>,
): Promise<{ port: number; f: TcpForwarder }> {
  const t = 'listen' in target ? { address: '127.0.0.1', port: (target.address() as { port: number }).port, family: 4 as const } : target;
  const f = await startTcpForwarder({ ...opts, target: { address: t.address, family: t.family }, targetPort: t.port });
  return { port: f.port, f };
}

describe('tcp timeouts', () => {
  it('idle timeout closes a silent connection and spares a busy one', async () => {
    const { port, f } = await forward(echo, { idleTimeoutMs: 300 });
    const idle = await tcpConnect('127.0.0.1', port);
    let idleClosed = false;
    void readToClose(idle).then(() => {
      idleClosed = true;
    });
    const busy = await tcpConnect('127.0.0.1', port);
    busy.on('data', () => {});
    for (let i = 0; i < 10; i++) {
      busy.write('x');
      await sleep(100);
    }
    expect(idleClosed).toBe(true); // 300 ms timeout, 1 s elapsed
    expect(busy.destroyed).toBe(false);
    // The native engine reports closes from its thread, a moment after the client sees them.
    await vi.waitFor(() => expect(f.stats.idleTimeouts).toBe(1));
    busy.destroy();
  });

  it('linger timeout closes a half-closed connection that stays idle; without it, it stays', async () => {
    const { port, f } = await forward(silent, { lingerTimeoutMs: 300 });
    const s = await tcpConnect('127.0.0.1', port);
    const closed = readToClose(s);
    s.end('bye');
    const t0 = Date.now();
    await closed;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    // The native engine reports closes from its thread, a moment after the client sees them.
    await vi.waitFor(() => expect(f.stats.lingerTimeouts).toBe(1));

    const { port: p2, f: f2 } = await forward(silent, { lingerTimeoutMs: 0 });
    const s2 = await tcpConnect('127.0.0.1', p2);
    s2.end('bye');
    await sleep(600);
    expect(f2.stats.active).toBe(1); // docker-proxy's behaviour: half-closed forever
    s2.destroy();
  });
});

describe.skipIf(!IS_ROOT)('tcp connect timeout (namespace that drops SYNs)', () => {
  const backend = useBackend(['--echo', '7000']); // the DROP rule goes with its namespace
  beforeAll(() => {
    execFileSync('ip', ['netns', 'exec', backend.namespace as string, 'iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '7999', '-j', 'DROP']);
  });

  it('connect timeout gives up the dial, counts it, logs it and closes the client', async () => {
    const { log, lines } = recorder();
    const { port, f } = await forward({ address: backend.ipv4, port: 7999, family: 4 }, { connectTimeoutMs: 400, log });
    const t0 = Date.now();
    const { data } = await readToClose(await tcpConnect('127.0.0.1', port));
    expect(data.length).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(f.stats.connectErrors.timeout).toBe(1);
    await sleep(50);
    expect(f.stats.active).toBe(0);
    await warned(lines, 'connect to target timed out; closing client');
    expect(lines).toContainEqual({ obj: { target: `${backend.ipv4}:7999`, connectTimeoutMs: 400 }, msg: 'connect to target timed out; closing client' });
  });
});

describe('tcp dial failures', () => {
  it('a refused dial closes the client and is logged as Node words it, on either engine', async () => {
    const closed = await freePort();
    const { log, lines } = recorder();
    const { port, f } = await forward({ address: '127.0.0.1', port: closed, family: 4 }, { log });
    const { data } = await readToClose(await tcpConnect('127.0.0.1', port));
    expect(data.length).toBe(0);
    await vi.waitFor(() => expect(f.stats.connectErrors.refused).toBe(1));
    await warned(lines, 'cannot connect to target; closing client');
    expect(lines).toContainEqual({
      obj: { target: `127.0.0.1:${closed}`, err: `connect ECONNREFUSED 127.0.0.1:${closed}` },
      msg: 'cannot connect to target; closing client',
    });
  });
});

const FLOOD = 7200;
const flood = useBackend(['--flood', String(FLOOD)]);

/** Runs the slow reader against a port; `onStall` runs once it stopped reading. Resolves its verdict line. */
function stallClient(port: number, halfClose: boolean, pauseS: number, onStall?: () => void): Promise<string> {
  return new Promise((res) => {
    const c = spawn('python3', [join(ROOT, 'test/helpers/stall-client.py'), String(port), halfClose ? '1' : '0', String(pauseS)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    c.stdout.on('data', (d) => {
      out += d;
      if (out.includes('stalled\n') && onStall) {
        const f = onStall;
        onStall = undefined;
        f();
      }
    });
    c.once('exit', () => res(out.trim().split('\n').pop() ?? ''));
  });
}

describe('forced closes of stalled connections (audit M1)', () => {
  afterEach(async () => {
    await killTracked();
  });
  const docker = async (env: Record<string, string>) => {
    const port = await freePort();
    const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, flood.ipv4, FLOOD), { env });
    return { port, p };
  };
  const truncatedReset = (verdict: string) => {
    const [kind, bytes] = verdict.split(' ');
    expect(kind, verdict).toBe('reset');
    expect(Number(bytes)).toBeLessThan(4_000_000);
  };

  it('the idle timeout resets a connection whose reader stalled; a reader that keeps reading is never idle', async () => {
    const { port } = await docker({ USERLAND_PROXY_IDLE_TIMEOUT: '1s' });
    truncatedReset(await stallClient(port, false, 3));
    expect(await stallClient(port, false, 0.5)).toBe('eof 4000000');
  });

  it('the linger timeout resets a half-closed connection whose reader stalled', async () => {
    const { port } = await docker({ USERLAND_PROXY_LINGER_TIMEOUT: '1s' });
    truncatedReset(await stallClient(port, true, 3));
  });

  it('SIGTERM in docker mode resets a stalled connection', async () => {
    const { port, p } = await docker({});
    truncatedReset(await stallClient(port, false, 2, () => void sleep(300).then(() => p.stop('SIGTERM'))));
  });

  it('the drain timeout of standalone mode resets a stalled connection', async () => {
    const port = await freePort();
    const s = await startStandalone(['run', '-p', `127.0.0.1:${port}:${flood.ipv4}:${FLOOD}`, '--drain-timeout', '500ms']);
    truncatedReset(await stallClient(port, false, 3, () => void sleep(300).then(() => s.stop('SIGTERM'))));
  });
});
