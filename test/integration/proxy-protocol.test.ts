/**
 * PROXY protocol against a real peer: nginx (Debian) in the namespace listens with
 * `proxy_protocol` and answers with, and logs, `$proxy_protocol_addr $proxy_protocol_port`.
 * Through docker mode (USERLAND_PROXY_PROXY_PROTOCOL=v1|v2) and standalone mode, nginx must see
 * the real client address and port, over IPv4 and IPv6 fronts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IS_ROOT, startBackend, type Backend } from '../helpers/netns.js';
import { freePort, sleep, tcpConnect } from '../helpers/net.js';
import { startProxy, dockerArgv } from '../helpers/proxy.js';
import { startStandalone } from '../helpers/standalone.js';
import { startTcpForwarder } from '../helpers/data-path.js';
import { killTracked } from '../helpers/processes.js';
import { proxyHeader } from '../../src/core/proxy-protocol.js';

const CAN = IS_ROOT && existsSync('/usr/sbin/nginx');
const dir = mkdtempSync(join(tmpdir(), 'upt-nginx-'));
let backend: Backend;
let nginx: ChildProcess | null = null;
const NGINX_PORT = 7200;

beforeAll(async () => {
  if (!CAN) {
    console.warn('SKIPPED: the PROXY protocol suite needs root and nginx (.ci/setup installs it)');
    return;
  }
  backend = await startBackend(['--echo', '7000']);
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d));
  writeFileSync(
    join(dir, 'nginx.conf'),
    `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  log_format pp '$proxy_protocol_addr $proxy_protocol_port';
  server {
    listen ${NGINX_PORT} proxy_protocol;
    listen [::]:${NGINX_PORT} proxy_protocol;
    access_log ${dir}/access.log pp;
    location / { return 200 "$proxy_protocol_addr $proxy_protocol_port\\n"; }
  }
}
`,
  );
  nginx = spawn('ip', ['netns', 'exec', backend.namespace as string, 'nginx', '-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: 'ignore' });
  for (let i = 0; i < 50 && !existsSync(join(dir, 'nginx.pid')); i++) await sleep(100);
}, 30_000);
afterAll(async () => {
  nginx?.kill('SIGKILL');
  await backend?.destroy();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await killTracked();
});

/** GET / from a known local port; returns nginx's answer and that port. */
async function getFrom(host: string, port: number): Promise<{ body: string; localPort: number }> {
  const probe = await tcpConnect(host, port); // learn nothing from it but that the port is up
  probe.destroy();
  return new Promise((res, rej) => {
    const req = request({ host, port, path: '/', agent: false }, (r) => {
      let body = '';
      r.on('data', (d) => {
        body += d;
      });
      r.on('end', () => res({ body, localPort }));
    });
    let localPort = 0;
    req.on('socket', (s) =>
      s.on('connect', () => {
        localPort = s.localPort ?? 0;
      }),
    );
    req.on('error', rej);
    req.end();
  });
}

describe.skipIf(!CAN)('PROXY protocol with nginx', () => {
  for (const version of ['v1', 'v2'] as const) {
    it(`docker mode sends a ${version} header: nginx sees the real client address and port (IPv4 and IPv6 fronts)`, async () => {
      for (const [front, target] of [
        ['127.0.0.1', backend.ipv4],
        ['::1', backend.ipv6],
      ] as const) {
        const port = await freePort(front);
        await startProxy(dockerArgv('tcp', front, port, target, NGINX_PORT), { env: { USERLAND_PROXY_PROXY_PROTOCOL: version } });
        const { body, localPort } = await getFrom(front, port);
        expect(body).toBe(`${front} ${localPort}\n`);
        await killTracked();
      }
      expect(readFileSync(join(dir, 'access.log'), 'utf8')).toMatch(/^127\.0\.0\.1 \d+$/m);
    });
  }

  it('standalone mode sends the header for a mapping with "proxyProtocol" in the config file', async () => {
    const port = await freePort();
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ publish: [{ spec: `127.0.0.1:${port}:${backend.ipv4}:${NGINX_PORT}`, proxyProtocol: 'v2' }] }));
    await startStandalone(['run', '--config', file]);
    const { body, localPort } = await getFrom('127.0.0.1', port);
    expect(body).toBe(`127.0.0.1 ${localPort}\n`);
  });

  it('without the option nginx rejects the connection (it requires the header): the option is what makes it work', async () => {
    const port = await freePort();
    await startProxy(dockerArgv('tcp', '127.0.0.1', port, backend.ipv4, NGINX_PORT));
    await expect(getFrom('127.0.0.1', port)).rejects.toThrow();
  });
});

describe('PROXY protocol headers, byte for byte', () => {
  /** A target that records the first bytes of each connection it gets. */
  async function recorder(host: string): Promise<{ port: number; next: () => Promise<Buffer>; close: () => void }> {
    const got: Buffer[] = [];
    const waiters: ((b: Buffer) => void)[] = [];
    const server = createServer((c) => {
      c.once('data', (d: Buffer) => {
        const w = waiters.shift();
        if (w) w(d);
        else got.push(d);
        c.destroy();
      });
      c.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, host, r));
    return {
      port: (server.address() as AddressInfo).port,
      next: () => new Promise<Buffer>((r) => (got.length ? r(got.shift() as Buffer) : waiters.push(r))),
      close: () => server.close(),
    };
  }

  // Audit N2: a client that sends and resets at once has no peer address left when the proxy
  // asks for it. The target must never get its bytes behind PROXY UNKNOWN / v2 LOCAL (which mean
  // "these bytes are the proxy's own"): such a client is reset, never dialled.
  for (const version of ['v1', 'v2'] as const) {
    it(`${version}: clients that send then reset at once never reach the target without their address`, async () => {
      const seen: Buffer[] = [];
      const target = createServer((c) => {
        const parts: Buffer[] = [];
        c.on('data', (d: Buffer) => parts.push(d));
        c.on('close', () => seen.push(Buffer.concat(parts)));
        c.on('error', () => {});
      });
      await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
      const f = await startTcpForwarder({ targetPort: (target.address() as AddressInfo).port, proxyProtocol: version });
      try {
        // Another process, as in the audit: in this one the accept would run before the reset.
        const clients = spawn('python3', [
          '-c',
          `import socket,struct
for i in range(100):
  c=socket.create_connection(("127.0.0.1",${f.port})); c.sendall(b"GET /admin HTTP/1.0\\r\\n\\r\\n")
  c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack("ii",1,0)); c.close()`,
        ]);
        expect(await new Promise((r) => clients.on('exit', r))).toBe(0);
        await sleep(1500);
        const withPayload = seen.filter((b) => b.includes('GET /admin'));
        for (const b of withPayload) {
          if (version === 'v1') expect(b.toString('latin1')).toMatch(/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\nGET/);
          else expect(b.subarray(12, 14).toString('hex')).toBe('2111'); // PROXY command, TCP over IPv4: never LOCAL (0x20)
        }
        expect(f.stats.accepted).toBe(100);
      } finally {
        f.close();
        target.close();
      }
    });
  }

  // On the native engine the header is built in C (native/accept.c): it must match proxy-protocol.ts.
  for (const version of ['v1', 'v2'] as const) {
    for (const [family, host] of [
      [4, '127.0.0.1'],
      [6, '::1'],
    ] as const) {
      it(`${version} over IPv${family}: exactly proxyHeader()'s bytes first`, async () => {
        const target = await recorder(host);
        const f = await startTcpForwarder({ target: host, targetPort: target.port, proxyProtocol: version }, host);
        try {
          const c = await tcpConnect(host, f.port);
          c.write('hello');
          const header = proxyHeader(version, { srcAddress: host, srcPort: c.localPort ?? 0, dstAddress: host, dstPort: f.port }) as Buffer;
          const first = await target.next(); // the header is sent whole, before any client byte
          expect(first.subarray(0, header.length).toString('hex')).toBe(header.toString('hex'));
          c.destroy();
        } finally {
          f.close();
          target.close();
        }
      });
    }
  }
});
