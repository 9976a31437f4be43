/**
 * Standalone mode through the built launcher: port ranges over IPv4 and IPv6, one worker per
 * mapping with crash isolation and restart, live reload that leaves unchanged mappings' TCP
 * connections and UDP flows alone, drain on SIGTERM, exact counters on /metrics, health
 * endpoints, all-or-nothing start, check and demo.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { useBackend } from '../helpers/netns.js';
import { freePort, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { get, postReload, sample, startStandalone } from '../helpers/standalone.js';
import { BIN } from '../helpers/proxy.js';
import { killTracked, track } from '../helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'upt-standalone-'));

const backend = useBackend(['--tag', '7100', '--tag', '7101', '--tag', '7102', '--echo', '7000', '--hold', '7001', '--whoami', '7003']);
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await killTracked();
});

async function tag(host: string, port: number): Promise<string> {
  return (await tcpRoundTrip(host, port, Buffer.alloc(0))).toString();
}

describe('userland-proxy run', () => {
  it('run forwards TCP and UDP port ranges port by port, over IPv4 and IPv6', async () => {
    const [t4, t6, u4] = [await freePort('127.0.0.1', 3), await freePort('::1', 3), await freePort('127.0.0.1', 3)];
    const s = await startStandalone([
      'run',
      '-p',
      `127.0.0.1:${t4}-${t4 + 2}:${backend.ipv4}:7100-7102`,
      '-p',
      `[::1]:${t6}-${t6 + 2}:[${backend.ipv6}]:7100-7102`,
      '-p',
      `127.0.0.1:${u4}-${u4 + 2}:${backend.ipv4}:7100-7102/udp`,
    ]);
    for (let i = 0; i < 3; i++) {
      expect(await tag('127.0.0.1', t4 + i)).toBe(`port ${7100 + i}`);
      expect(await tag('::1', t6 + i)).toBe(`port ${7100 + i}`);
      const c = udpClient(4);
      expect((await udpRequest(c, '127.0.0.1', u4 + i, 'x')).toString()).toBe(`port ${7100 + i}`);
      c.close();
    }
    expect(await s.stop()).toEqual({ code: 0, signal: null });
  });

  it('run counts exactly: bytes, connections and datagrams on /metrics match what was sent', async () => {
    const [tp, up, mp] = [await freePort(), await freePort(), await freePort()];
    await startStandalone([
      'run',
      '-p',
      `127.0.0.1:${tp}:${backend.ipv4}:7000`,
      '-p',
      `127.0.0.1:${up}:${backend.ipv4}:7000/udp`,
      '--metrics',
      `127.0.0.1:${mp}`,
    ]);
    let bytes = 0;
    for (let i = 0; i < 7; i++) {
      const d = randomBytes(1000 + i * 77_777);
      bytes += d.length;
      expect(sha256(await tcpRoundTrip('127.0.0.1', tp, d))).toBe(sha256(d));
    }
    const c = udpClient(4);
    let dbytes = 0;
    for (let i = 0; i < 25; i++) {
      const d = randomBytes(10 + i * 100);
      dbytes += d.length;
      await udpRequest(c, '127.0.0.1', up, d);
    }
    c.close();
    await sleep(100);
    const { status, body } = await get(`http://127.0.0.1:${mp}/metrics`);
    expect(status).toBe(200);
    const tm = `tcp/127.0.0.1:${tp}`;
    const um = `udp/127.0.0.1:${up}`;
    expect(sample(body, 'userland_proxy_connections_accepted_total', { mapping: tm })).toBe(7);
    expect(sample(body, 'userland_proxy_connections_active', { mapping: tm })).toBe(0);
    expect(sample(body, 'userland_proxy_bytes_total', { mapping: tm, proto: 'tcp', direction: 'in' })).toBe(bytes);
    expect(sample(body, 'userland_proxy_bytes_total', { mapping: tm, proto: 'tcp', direction: 'out' })).toBe(bytes);
    expect(sample(body, 'userland_proxy_connection_duration_seconds_count', { mapping: tm })).toBe(7);
    expect(sample(body, 'userland_proxy_udp_datagrams_total', { mapping: um, direction: 'in' })).toBe(25);
    expect(sample(body, 'userland_proxy_udp_datagrams_total', { mapping: um, direction: 'out' })).toBe(25);
    expect(sample(body, 'userland_proxy_bytes_total', { mapping: um, proto: 'udp', direction: 'in' })).toBe(dbytes);
    expect(sample(body, 'userland_proxy_udp_flows_created_total', { mapping: um })).toBe(1);
    expect(sample(body, 'userland_proxy_mapping_up', { mapping: um, proto: 'udp' })).toBe(1);
    expect(sample(body, 'userland_proxy_build_info', { version: '0.1.0', node_version: process.version })).toBe(1);
    expect(body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(await get(`http://127.0.0.1:${mp}/healthz`)).toEqual({ status: 200, body: 'ok\n' });
    expect(await get(`http://127.0.0.1:${mp}/readyz`)).toEqual({ status: 200, body: 'ready\n' });
    expect((await get(`http://127.0.0.1:${mp}/nope`)).status).toBe(404);
  });

  it('run isolates a crashing worker under load: other mappings keep serving every byte, it restarts and is counted', async () => {
    const [a, b, c, mp] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const crashing = `tcp/127.0.0.1:${a}`;
    await startStandalone(
      [
        'run',
        '-p',
        `127.0.0.1:${a}:${backend.ipv4}:7100`,
        '-p',
        `127.0.0.1:${b}:${backend.ipv4}:7101`,
        '-p',
        `127.0.0.1:${c}:${backend.ipv4}:7000`,
        '--metrics',
        `127.0.0.1:${mp}`,
      ],
      { USERLAND_PROXY_TEST_CRASH: crashing },
    );
    // The injected fault fires 200 ms after ready; keep the other mapping under load meanwhile:
    // rounds of 8 concurrent 256 KiB echo transfers, every checksum intact.
    for (let round = 0; round < 6; round++) {
      expect(await tag('127.0.0.1', b)).toBe('port 7101');
      const payloads = Array.from({ length: 8 }, () => randomBytes(256 << 10));
      const back = await Promise.all(payloads.map((d) => tcpRoundTrip('127.0.0.1', c, d)));
      for (const [i, r] of back.entries()) expect(sha256(r)).toBe(sha256(payloads[i] as Buffer));
    }
    let restarts = 0;
    for (let i = 0; i < 50 && restarts < 1; i++) {
      await sleep(100);
      restarts = sample((await get(`http://127.0.0.1:${mp}/metrics`)).body, 'userland_proxy_worker_restarts_total', { mapping: crashing }) ?? 0;
    }
    expect(restarts).toBe(1);
    let back = '';
    for (let i = 0; i < 50 && back !== 'port 7100'; i++) {
      back = await tag('127.0.0.1', a).catch(() => '');
      if (back !== 'port 7100') await sleep(100);
    }
    expect(back).toBe('port 7100');
    expect(sample((await get(`http://127.0.0.1:${mp}/metrics`)).body, 'userland_proxy_worker_restarts_total', { mapping: `tcp/127.0.0.1:${b}` })).toBe(0);
  });

  it('run reloads on SIGHUP: unchanged mappings keep live TCP connections and UDP flows; bad configs are rejected', async () => {
    const [keepT, keepU, gone, added, mp] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
    const file = join(dir, 'reload.json');
    const base = [`127.0.0.1:${keepT}:${backend.ipv4}:7000`, `127.0.0.1:${keepU}:${backend.ipv4}:7003/udp`];
    writeFileSync(file, JSON.stringify({ publish: [...base, `127.0.0.1:${gone}:${backend.ipv4}:7100`], metrics: `127.0.0.1:${mp}` }));
    const s = await startStandalone(['run', '--config', file]);
    const live = await tcpConnect('127.0.0.1', keepT);
    const echoed = (text: string) => new Promise<string>((res) => live.once('data', (d) => res(d.toString())) && live.write(text));
    expect(await echoed('before')).toBe('before');
    const flow = udpClient(4);
    const source = (await udpRequest(flow, '127.0.0.1', keepU, 'who')).toString();
    expect(await tag('127.0.0.1', gone)).toBe('port 7100');

    writeFileSync(file, JSON.stringify({ publish: [...base, `127.0.0.1:${added}:${backend.ipv4}:7101`], metrics: `127.0.0.1:${mp}` }));
    s.child.kill('SIGHUP');
    let now = '';
    for (let i = 0; i < 50 && now !== 'port 7101'; i++) {
      await sleep(100);
      now = await tag('127.0.0.1', added).catch(() => '');
    }
    expect(now).toBe('port 7101');
    // A reload starts the added mappings first and retires the removed ones after (supervisor.ts):
    // the removed port may still answer for a moment after the added one serves.
    for (
      let i = 0;
      i < 50 &&
      (await tag('127.0.0.1', gone).then(
        () => true,
        () => false,
      ));
      i++
    )
      await sleep(100);
    await expect(tag('127.0.0.1', gone)).rejects.toThrow();
    expect(await echoed('after')).toBe('after');
    expect((await udpRequest(flow, '127.0.0.1', keepU, 'who')).toString()).toBe(source);

    // An invalid file is rejected and everything keeps running; POST /-/reload says why.
    writeFileSync(file, JSON.stringify({ publish: ['not a spec'], metrics: `127.0.0.1:${mp}` }));
    const r = await postReload(mp);
    expect(r.status).toBe(500);
    expect(r.body).toContain('reload rejected, running configuration kept: invalid publish spec "not a spec"');
    expect(await echoed('still')).toBe('still');
    expect(await tag('127.0.0.1', added)).toBe('port 7101');
    flow.close();
    live.destroy();
  });

  it('run drains on SIGTERM: an in-flight transfer finishes, then it exits 0', async () => {
    const port = await freePort();
    const s = await startStandalone(['run', '-p', `127.0.0.1:${port}:${backend.ipv4}:7001`, '--drain-timeout', '10s']);
    const c = await tcpConnect('127.0.0.1', port);
    const reply = readToClose(c);
    const data = randomBytes(2 << 20);
    c.end(data);
    await sleep(200);
    s.child.kill('SIGTERM');
    await sleep(300);
    expect(s.child.exitCode).toBeNull(); // still draining
    await expect(tcpConnect('127.0.0.1', port)).rejects.toThrow(); // no longer accepting
    await backend.command('resume');
    expect((await reply).data.toString()).toBe(`${data.length} ${sha256(data)}`);
    expect(await s.exited).toEqual({ code: 0, signal: null });
  });

  it('run starts all-or-nothing: one unbindable mapping stops everything, exit 1', async () => {
    const [ok, busy] = [await freePort(), await freePort()];
    const blocker = createServer().listen(busy, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const s = await startStandalone(['run', '-p', `127.0.0.1:${ok}:${backend.ipv4}:7000`, '-p', `127.0.0.1:${busy}:${backend.ipv4}:7000`], {}, false);
    expect((await s.exited).code).toBe(1);
    // Log lines go to stderr too; the error is the last line.
    expect(s.stderr().trim().split('\n').pop()).toBe(
      `userland-proxy: mapping tcp/127.0.0.1:${busy}: listen tcp4 127.0.0.1:${busy}: bind: address already in use`,
    );
    blocker.close();
    await expect(tcpConnect('127.0.0.1', ok)).rejects.toThrow();
  });

  it('run and check reject bad configuration with one line and exit 2, starting nothing', async () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ publish: ['8080:10.0.0.2:80'], drainTimeout: 'forever' }));
    for (const [args, msg] of [
      [['check', '--config', bad], 'invalid config key "drainTimeout" "forever": use a duration such as 500ms, 90s or 5m'],
      [['run', '-p', '8080:10.0.0.2:80', '-p', '8080:10.0.0.3:80'], 'duplicate binding'],
      [['run', '--bogus'], 'Unknown argument: bogus'],
      [['check'], 'no mappings'],
    ] as const) {
      const s = await startStandalone([...args], {}, false);
      expect((await s.exited).code, args.join(' ')).toBe(2);
      expect(s.stderr().trim().split('\n')).toHaveLength(1);
      expect(s.stderr()).toContain(msg);
    }
    const ok = await startStandalone(['check', '-p', '127.0.0.1:8000-8009:10.0.0.2:9000-9009/udp'], {}, false);
    expect((await ok.exited).code).toBe(0);
    expect(ok.stdout()).toContain('udp/127.0.0.1:8000-8009 -> 10.0.0.2:9000-9009');
  });

  it.skipIf(!existsSync('/usr/bin/script'))('run prints human-readable, level-coloured lines to a terminal (JSON elsewhere)', async () => {
    const port = await freePort();
    const child = spawn('script', ['-qfec', `exec ${BIN} run -p 127.0.0.1:${port}:${backend.ipv4}:7000`, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { ...process.env, NO_COLOR: '' },
    });
    const exited = track(child);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    try {
      await vi.waitFor(() => expect(out).toContain('ready:'), { timeout: 10_000 });
      const line = out.split(/\r?\n/).find((l) => l.includes('mapping ready')) ?? '';
      expect(line).toMatch(/^\d\d:\d\d:\d\d\.\d{3} /);
      expect(line).toContain(`\x1b[32mINFO \x1b[0m [tcp/127.0.0.1:${port}] mapping ready ports=1`);
      expect(out).not.toContain('{"level"');
    } finally {
      // Ctrl-C at the terminal: SIGINT to the proxy, which stops; script then exits with it.
      // (`exec` above: script runs $SHELL -c, and dash, unlike bash, forks and then dies of the
      // SIGINT itself, so script would report 130 whatever the proxy did.)
      // (Killing script alone would leave the proxy running: it takes SIGHUP as a reload.)
      child.stdin.write('\x03');
      const stopped = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
      if (!stopped) spawnSync('pkill', ['-f', '--', `dist/cli.js run -p 127.0.0.1:${port}:`]);
    }
    expect((await exited).code).toBe(0);
  });

  it('demo serves HTTP and UDP through the engine with metrics, and stops on SIGINT', async () => {
    const [port, mp] = [await freePort(), await freePort()];
    const s = await startStandalone(['demo', '--port', String(port), '--metrics-port', String(mp)]);
    expect(s.stdout()).toContain(`curl http://127.0.0.1:${port}/`);
    expect((await get(`http://127.0.0.1:${port}/`)).body).toMatch(/^hello from the demo backend: request 1/);
    const c = udpClient(4);
    expect((await udpRequest(c, '127.0.0.1', port, 'echo me')).toString()).toBe('echo me');
    c.close();
    expect(sample((await get(`http://127.0.0.1:${mp}/metrics`)).body, 'userland_proxy_connections_accepted_total', { mapping: `tcp/127.0.0.1:${port}` })).toBe(
      1,
    );
    expect(await s.stop('SIGINT')).toEqual({ code: 0, signal: null });
  });
});
