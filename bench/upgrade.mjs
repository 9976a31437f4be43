#!/usr/bin/env node
// `userland-proxy upgrade` under load (issue 18's acceptance), as an operator runs it: the project
// installed with deploy/docker/install.sh into a temporary prefix, --ports TCP mappings and one UDP
// mapping started the way dockerd starts them (shims, one engine), then for --seconds:
//   --streams TCP connections, each echoing 16 KiB of random bytes every 20 ms, checked byte for byte
//   new connections all along (a round trip each), counting any that fail
//   --flows UDP flows (a socket each), together one datagram every 1/--rate s, replies counted
// Midway the install's package.json gets another version and `userland-proxy upgrade` moves every
// mapping to a new engine. The same load runs once without the upgrade first: the UDP losses of
// this machine under this load (its own receive buffers, not the hand-over) are the baseline.
// Reports what moved and how long it took, what broke, and when the old engine exited.
// Usage: node bench/upgrade.mjs [--ports 20] [--streams 200] [--flows 1000] [--rate 5000] [--seconds 14]
// Traffic: 127.0.0.1 only; the echo servers are child processes; everything is removed at the end.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { enginePids, freePort, machine, ROOT, sleep, spawnDockerMode, stopChild, stopEngines } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => Number(args.includes(n) ? args[args.indexOf(n) + 1] : d);
const PORTS = opt('--ports', 20);
const STREAMS = opt('--streams', 200);
const FLOWS = opt('--flows', 1000);
const RATE = opt('--rate', 5000);
const SECONDS = opt('--seconds', 14);
const log = (m) => process.stdout.write(`${m}\n`);

const PREFIX = mkdtempSync('/tmp/upb-upgrade-');
execFileSync('sh', [join(ROOT, 'deploy/docker/install.sh'), join(PREFIX, 'opt')], {
  stdio: 'ignore',
  env: { ...process.env, USERLAND_PROXY_ENGINE_SOCKET: 'upb-none' },
});
const UP = join(PREFIX, 'opt/bin/userland-proxy');
const PKG = join(PREFIX, 'opt/package.json');
const pkg = readFileSync(PKG, 'utf8');

// The "containers": TCP and UDP echo in a child process (UDP with 8 MiB buffers, so that the
// echo itself drops nothing a loaded machine would make it drop).
const ECHO_SRC = `
const net = require('node:net'), dgram = require('node:dgram');
const t = net.createServer((c) => { c.on('error', () => {}); c.pipe(c); }).listen(0, '127.0.0.1', () => {
  const u = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20, sendBufferSize: 8 << 20 });
  u.on('message', (m, r) => u.send(m, r.port, r.address));
  u.bind(0, '127.0.0.1', () => process.stdout.write(t.address().port + ' ' + u.address().port + '\\n'));
});
process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;

async function run(upgrade) {
  const name = `upb-upgrade-${process.pid}-${upgrade ? 'u' : 'n'}`;
  // (UDP flows idle out after 10 s, not 90: the old engine, which drains them, exits sooner.)
  const env = { ...process.env, USERLAND_PROXY_ENGINE_SOCKET: name, USERLAND_PROXY_SHARED: 'true', USERLAND_PROXY_UDP_IDLE_TIMEOUT: '10s' };
  const echo = spawn(process.execPath, ['-e', ECHO_SRC], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [tcpEcho, udpEcho] = (await new Promise((res) => echo.stdout.once('data', res))).toString().trim().split(' ').map(Number);
  const ports = [];
  for (let i = 0; i < PORTS; i++) ports.push(await freePort());
  const udpPort = await freePort();
  const shims = [];
  const argv = (proto, p, target) => [
    '-proto',
    proto,
    '-host-ip',
    '127.0.0.1',
    '-host-port',
    String(p),
    '-container-ip',
    '127.0.0.1',
    '-container-port',
    String(target),
  ];
  for (const p of ports) shims.push((await spawnDockerMode(UP, argv('tcp', p, tcpEcho), env)).child);
  shims.push((await spawnDockerMode(UP, argv('udp', udpPort, udpEcho), env)).child);
  const [oldEngine] = enginePids(name);

  const end = Date.now() + SECONDS * 1000;
  const r = { streamsOk: 0, streamsBroken: [], mib: 0, connects: 0, connectFailed: 0, udpSent: 0, udpReplies: 0 };
  const stream = (port) =>
    new Promise((res) => {
      const s = connect(port, '127.0.0.1');
      let chunk = null;
      let got = [];
      let n = 0;
      const next = () => {
        if (Date.now() > end) {
          r.streamsOk++;
          s.end();
          return res();
        }
        chunk = randomBytes(16384);
        got = [];
        n = 0;
        s.write(chunk);
      };
      s.on('data', (d) => {
        got.push(d);
        n += d.length;
        if (n < chunk.length) return;
        if (!Buffer.concat(got).equals(chunk)) {
          r.streamsBroken.push('bytes differ');
          s.destroy();
          return res();
        }
        r.mib += chunk.length / 2 ** 20;
        setTimeout(next, 20);
      });
      s.on('error', (e) => {
        r.streamsBroken.push(e.code ?? e.message);
        res();
      });
      s.on('end', () => {
        if (Date.now() <= end) r.streamsBroken.push('EOF mid-stream');
      });
      s.once('connect', next);
    });
  const churn = async () => {
    for (let i = 0; Date.now() < end; i++) {
      const ok = await new Promise((res) => {
        const s = connect(ports[i % ports.length], '127.0.0.1');
        const done = (ok) => {
          clearTimeout(t);
          s.destroy();
          res(ok);
        };
        const t = setTimeout(() => done(false), 3000);
        s.on('error', () => done(false));
        s.once('connect', () => s.write('x'));
        s.once('data', () => done(true));
      });
      if (ok) r.connects++;
      else r.connectFailed++;
      await sleep(5);
    }
  };
  const flows = [];
  for (let i = 0; i < FLOWS; i++) {
    const u = createSocket({ type: 'udp4', recvBufferSize: 1 << 20 });
    u.on('message', () => r.udpReplies++);
    await new Promise((res) => u.bind(0, '127.0.0.1', res));
    flows.push(u);
  }
  // Paced: datagram k leaves at start + k/RATE s, flow k % FLOWS.
  const udpLoad = async () => {
    const t0 = Date.now();
    for (let k = 0; Date.now() < end; ) {
      const due = Math.floor(((Date.now() - t0) * RATE) / 1000);
      for (; k < due; k++) {
        flows[k % FLOWS].send(`u${k}`, udpPort, '127.0.0.1');
        r.udpSent++;
      }
      await sleep(2);
    }
  };
  const load = Promise.all([...Array.from({ length: STREAMS }, (_, i) => stream(ports[i % ports.length])), churn(), udpLoad()]);
  let report = null;
  if (upgrade) {
    await sleep((SECONDS * 1000) / 3);
    writeFileSync(PKG, pkg.replace(/"version": "[^"]*"/, '"version": "9.9.9-bench"'));
    const t0 = Date.now();
    const u = spawnSync(UP, ['upgrade'], { env, encoding: 'utf8', timeout: 60_000 });
    report = { ms: Date.now() - t0, out: (u.stdout + u.stderr).trim(), status: u.status };
    writeFileSync(PKG, pkg);
  }
  await load;
  const loadEnded = Date.now();
  await sleep(2000); // the last replies
  for (const u of flows) u.close();
  const rows = spawnSync(UP, ['ls', '--json'], { env, encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  // The old engine goes with its last connection and UDP flow (they idle out: the UDP idle timeout).
  let oldExit = null;
  if (upgrade) {
    for (let i = 0; i < 1200 && enginePids(name).includes(oldEngine); i++) await sleep(100);
    if (!enginePids(name).includes(oldEngine)) oldExit = Date.now() - loadEnded;
  }
  for (const c of shims) await stopChild(c);
  await stopEngines(name);
  echo.stdin.end();
  const versions = [...new Set(rows.map((x) => `${x.version} (${x.state})`))].join(', ');
  return { ...r, report, versions, oldExit };
}

log(`${machine()}; ${PORTS} TCP ports + 1 UDP, ${STREAMS} streams, ${FLOWS} UDP flows at ${RATE}/s, ${SECONDS} s`);
try {
  for (const upgrade of [false, true]) {
    const x = await run(upgrade);
    log(`\n${upgrade ? 'with userland-proxy upgrade' : 'baseline, no upgrade'}:`);
    if (x.report) log(`  upgrade (exit ${x.report.status}, ${x.report.ms} ms): ${x.report.out}`);
    log(
      `  TCP streams: ${x.streamsOk} of ${STREAMS} intact to the end, ${x.streamsBroken.length} broken ${JSON.stringify(x.streamsBroken.slice(0, 5))}; ${x.mib.toFixed(0)} MiB checked`,
    );
    log(`  new connections: ${x.connects} served, ${x.connectFailed} failed`);
    log(`  UDP: ${x.udpSent} sent, ${x.udpReplies} answered (${x.udpSent - x.udpReplies} lost)`);
    log(`  ls after the load: ${x.versions}`);
    if (upgrade) log(`  old engine: ${x.oldExit === null ? 'still running 120 s after the load ended' : `exited ${x.oldExit} ms after the load ended`}`);
  }
} finally {
  rmSync(PREFIX, { recursive: true, force: true });
}
