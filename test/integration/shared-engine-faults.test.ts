/**
 * One mapping's fault is that mapping's, never the shared engine's (audit 2026-12 N3), and a dying
 * proxy resets what it relayed instead of passing a truncated transfer off with a FIN (N4). The
 * faults are injected as the audit reproduced them: a log directory gone at SIGHUP, a log file on
 * a full disk (/dev/full), a unix socket as fd 4, and SIGKILL of the serving process. Runs on the
 * project's engine (USERLAND_PROXY_ENGINE), on loopback and in a test namespace only.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { serverFd } from '../../src/core/node-internals.js';
import { enginePids, servingPid, useOwnEngines } from '../helpers/shared-engines.js';
import { freePort, sleep, tcpConnect, tcpRoundTrip } from '../helpers/net.js';
import { useBackend } from '../helpers/netns.js';
import { dockerArgv, ROOT, spawnProxy, startProxy } from '../helpers/proxy.js';
import { testEngine } from '../helpers/data-path.js';

const HAVE_SHIM = existsSync(join(ROOT, 'build/Release/userland-proxy-shim'));
const ECHO = 7000;
const backend = useBackend(['--echo', String(ECHO)]);

const engineEnv = useOwnEngines('ft');
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const tcpArgs = (port: number) => dockerArgv('tcp', '127.0.0.1', port, backend.ipv4, ECHO);
const echoes = async (port: number): Promise<boolean> => {
  try {
    return (await tcpRoundTrip('127.0.0.1', port, Buffer.from('ping'))).toString() === 'ping';
  } catch {
    return false;
  }
};
/** One round trip on a connection that stays open. */
const roundTrip = (c: Socket, text: string): Promise<string> =>
  new Promise((res, rej) => {
    c.once('data', (d) => res(d.toString()));
    c.once('error', rej);
    c.once('end', () => rej(new Error('EOF')));
    c.write(text);
  });

describe.skipIf(!HAVE_SHIM)('one mapping fails alone (audit N3)', () => {
  it("a SIGHUP whose log directory is gone: the engine, the other mapping's open connection and the mapping itself carry on", async () => {
    const { name, env } = engineEnv();
    const dir = mkdtempSync(join(tmpdir(), 'upt-logs-'));
    dirs.push(dir);
    const [a, b] = [await freePort(), await freePort()];
    await startProxy(tcpArgs(a), { env });
    const pb = await startProxy(tcpArgs(b), { env: { ...env, USERLAND_PROXY_LOG_FILE: join(dir, 'b.log') } });
    const [engine] = enginePids(name);
    const open = await tcpConnect('127.0.0.1', a);
    expect(await roundTrip(open, 'one')).toBe('one');
    rmSync(dir, { recursive: true });
    process.kill(pb.pid, 'SIGHUP');
    await sleep(500);
    expect(enginePids(name)).toEqual([engine]);
    expect(await roundTrip(open, 'two')).toBe('two');
    expect(await echoes(b)).toBe(true);
    open.destroy();
  });

  it('a mapping whose log file is on a full disk (/dev/full) registers and serves; the engine stays up', async () => {
    const { name, env } = engineEnv();
    const [a, b] = [await freePort(), await freePort()];
    await startProxy(tcpArgs(a), { env });
    const [engine] = enginePids(name);
    const open = await tcpConnect('127.0.0.1', a);
    const full = spawnProxy(tcpArgs(b), { env: { ...env, USERLAND_PROXY_LOG_FILE: '/dev/full', USERLAND_PROXY_LOG_LEVEL: 'debug' } });
    expect(await full.status).toBe('0\n');
    for (let i = 0; i < 5; i++) expect(await echoes(b)).toBe(true); // debug lines per connection: each write fails
    await sleep(300);
    expect(enginePids(name)).toEqual([engine]);
    expect(await roundTrip(open, 'still')).toBe('still');
    open.destroy();
  });

  it('a listening unix socket as fd 4 is refused with one line; the engine stays up', async () => {
    const { name, env } = engineEnv();
    const a = await freePort();
    await startProxy(tcpArgs(a), { env });
    const [engine] = enginePids(name);
    const dir = mkdtempSync(join(tmpdir(), 'upt-unix-'));
    dirs.push(dir);
    const unix: Server = await new Promise((res) => {
      const s = createServer();
      s.listen(join(dir, 'sock'), () => res(s));
    });
    try {
      const p = spawnProxy([...tcpArgs(await freePort()), '-use-listen-fd'], { env, listenFd: serverFd(unix) });
      expect(await p.status).toBe('1\n-use-listen-fd: fd 4 is not a usable listening TCP socket: not a TCP socket');
      expect((await p.exited).code).toBe(1);
      await sleep(200);
      expect(enginePids(name)).toEqual([engine]);
      expect(await echoes(a)).toBe(true);
    } finally {
      unix.close();
    }
  });
});

/**
 * Fault injection, preloaded into the engine: a JavaScript exception where one mapping's code
 * runs. A refused dial's warning throws (both engines: the JS dial handler, or the native
 * thread's event), and so does relaying a chunk that holds "BOOM" (the JavaScript relay).
 */
const INJECT = `
const { pathToFileURL } = require('node:url');
import(pathToFileURL(${JSON.stringify(join(ROOT, 'dist/core/logger.js'))}).href).then((m) => {
  const warn = m.RateLimitedLog.prototype.warn;
  m.RateLimitedLog.prototype.warn = function (key, ...rest) {
    if (key === 'connect:ECONNREFUSED') throw new Error('injected fault: refused dial');
    return warn.call(this, key, ...rest);
  };
});
const net = require('node:net');
const write = net.Socket.prototype.write;
net.Socket.prototype.write = function (chunk, ...rest) {
  if (Buffer.isBuffer(chunk) && chunk.includes('BOOM')) throw new Error('injected fault: relay');
  return write.call(this, chunk, ...rest);
};
`;

describe.skipIf(!HAVE_SHIM)('blast radius: an exception in one mapping ends that mapping alone', () => {
  it("the faulting mapping closes and comes back on the shim's socket (logged, counted); the others' connections and the engine carry on; a mapping faulting again and again is served alone", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'upt-inject-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'inject.cjs'), INJECT);
    const mport = await freePort();
    const { name, env } = engineEnv({
      USERLAND_PROXY_NODE_OPTIONS: `--require ${join(dir, 'inject.cjs')}`,
      USERLAND_PROXY_METRICS: `127.0.0.1:${mport}`,
    });
    const [a, b, f] = [await freePort(), await freePort(), await freePort()];
    await startProxy(tcpArgs(a), { env });
    await startProxy(tcpArgs(b), { env });
    // f's target refuses: its dial fails, and the warning throws.
    const pf = await startProxy(dockerArgv('tcp', '127.0.0.1', f, backend.ipv4, ECHO + 77), { env });
    const [engine] = enginePids(name);
    const open = await tcpConnect('127.0.0.1', a);
    expect(await roundTrip(open, 'before')).toBe('before');
    const restarts = async (): Promise<string> => {
      const text = await (await fetch(`http://127.0.0.1:${mport}/metrics`)).text();
      return (
        /userland_proxy_worker_restarts_total\{mapping="tcp\/127\.0\.0\.1:(\d+)"\} (\d+)/g.exec(
          text
            .split('\n')
            .filter((l) => l.includes(`:${f}"`))
            .join('\n'),
        )?.[2] ?? 'none'
      );
    };
    const faultOnce = async (): Promise<void> => {
      // (Closed with a FIN, or reset with its mapping, maybe before the connect completed.)
      const c = connect(f, '127.0.0.1');
      await new Promise((res) => {
        c.on('close', res);
        c.on('error', () => {});
        c.resume();
      });
    };
    await faultOnce();
    // The mapping comes back on the shim's socket (the port never unbound), counted once.
    await vi.waitFor(async () => expect(await restarts()).toBe('1'), { timeout: 5000, interval: 100 });
    expect(enginePids(name)).toEqual([engine]);
    expect(await roundTrip(open, 'after a fault')).toBe('after a fault');
    expect(await echoes(b)).toBe(true);
    if (testEngine() === 'js') {
      // An exception in the relay of one of b's connections: b restarts, a's connection is untouched.
      const c = await tcpConnect('127.0.0.1', b);
      c.on('error', () => {});
      c.write('BOOM');
      await vi.waitFor(async () => expect(await echoes(b)).toBe(true), { timeout: 5000, interval: 100 });
      expect(await roundTrip(open, 'after a relay fault')).toBe('after a relay fault');
      c.destroy();
    }
    // Two more faults within the window: the engine refuses it back, and its shim serves it alone.
    await faultOnce();
    await vi.waitFor(async () => expect(await restarts()).toBe('2'), { timeout: 5000, interval: 100 });
    await faultOnce();
    await vi.waitFor(() => expect(readlinkSync(`/proc/${pf.pid}/exe`)).toMatch(/node/), { timeout: 5000, interval: 100 });
    expect(enginePids(name)).toEqual([engine]);
    expect(await roundTrip(open, 'still')).toBe('still');
    open.destroy();
  });
});

/** Two downloads through argv[1], read slowly: each prints how it ended. */
const SLOW_READERS = `
import socket,sys,threading,time
def dl(out):
  s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,65536); s.connect(("127.0.0.1",int(sys.argv[1]))); s.sendall(b"B")
  try:
    while True:
      d=s.recv(65536)
      if not d: out.append("clean EOF"); return
      time.sleep(0.01)
  except ConnectionResetError: out.append("ECONNRESET")
  except OSError as e: out.append(str(e))
out=[]; ts=[threading.Thread(target=dl,args=(out,)) for i in range(2)]
[t.start() for t in ts]; print("reading",flush=True); [t.join(30) for t in ts]; print("\\n".join(out))
`;

describe('a proxy that dies resets what it relayed (audit N4)', () => {
  /** A target that sends `size` bytes once it reads a byte, then ends. */
  async function download(size: number): Promise<{ port: number; close: () => void }> {
    const server = createServer((c) => {
      c.on('error', () => {});
      c.once('data', () => c.end(Buffer.alloc(size, 0x64)));
    });
    const port = await freePort();
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    return { port, close: () => server.close() };
  }

  for (const shared of ['true', 'false'] as const) {
    it.skipIf(shared === 'true' && !HAVE_SHIM)(
      `SIGKILL of the serving process (${shared === 'true' ? 'shared engine' : 'per-port process'}): a download in flight ends with a reset, never a clean EOF`,
      async () => {
        const { env } = engineEnv({ USERLAND_PROXY_SHARED: shared });
        const target = await download(32 << 20);
        const port = await freePort();
        try {
          const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', target.port), { env });
          const pid = servingPid(p.pid, env);
          // Python, not Node, reads: libuv before 1.52 reports a reset that follows data as EOF
          // (libuv#2319), which is the very confusion under test.
          const client = spawn('python3', ['-c', SLOW_READERS, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          client.stdout.on('data', (d) => {
            out += d;
          });
          await vi.waitFor(() => expect(out).toContain('reading'), { timeout: 5000, interval: 20 });
          await sleep(300);
          process.kill(pid, 'SIGKILL');
          await new Promise((r) => client.on('exit', r));
          expect(out.trim().split('\n').slice(1)).toEqual(['ECONNRESET', 'ECONNRESET']);
        } finally {
          target.close();
        }
      },
    );
  }
});
