#!/usr/bin/env node
// Soak: many connections through ours (docker mode, spawned as dockerd does) to an echo backend,
// for a bounded time, with random transfer and chunk sizes, random pauses and half-closes, every
// byte checked with SHA-256 both ways; optionally holding N idle connections open meanwhile.
// Prints progress and a JSON summary; exits 1 on any lost or corrupted byte.
//   node bench/soak.mjs [--seconds 120] [--conns 100] [--hold 9000] [--max-bytes 4194304]
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { join } from 'node:path';
import { OURS, ROOT, enginePids, freePort, mem, sleep, spawnDockerMode, stopChild, stopEngines } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => Number(args.includes(n) ? args[args.indexOf(n) + 1] : d);
const SECONDS = opt('--seconds', 120);
const CONNS = opt('--conns', 100);
const HOLD = opt('--hold', 0);
const MAX_BYTES = opt('--max-bytes', 4 << 20);
const t0 = Date.now();
const log = (m) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${m}\n`);

const backendPort = await freePort();
const backend = spawn(process.execPath, [join(ROOT, 'test/helpers/backend.mjs'), '--echo', String(backendPort), '--host', '127.0.0.1'], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
await new Promise((res) => backend.stdout.once('data', res));
const port = await freePort();
// The docker-mode proxy as dockerd starts it; in shared mode (the default) the engine, of this
// run's own, is the process that serves and is measured.
const engineName = `upb-soak-${process.pid}`;
process.env.USERLAND_PROXY_ENGINE_SOCKET = engineName;
const { child: proxy } = await spawnDockerMode('/bin/sh', [
  '-c',
  'ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"',
  OURS,
  '-proto',
  'tcp',
  '-host-ip',
  '127.0.0.1',
  '-host-port',
  String(port),
  '-container-ip',
  '127.0.0.1',
  '-container-port',
  String(backendPort),
]);
const stats = {
  connections: 0,
  bytesSent: 0,
  bytesReceived: 0,
  mismatches: 0,
  errors: 0,
  maxRssMiB: 0,
  maxPrivateDirtyMiB: 0,
  heldConnections: 0,
  errorSamples: [],
};
const servingPid = enginePids(engineName)[0] ?? proxy.pid;
const sample = () => {
  const m = mem(servingPid);
  stats.maxRssMiB = Math.max(stats.maxRssMiB, m.rssMiB);
  stats.maxPrivateDirtyMiB = Math.max(stats.maxPrivateDirtyMiB, m.privateDirtyMiB);
};
const sampler = setInterval(sample, 500);

/** One connection: random size in random chunks, half-close, compare both hashes. */
function oneConnection() {
  return new Promise((resolve) => {
    const total = Math.floor(Math.random() * MAX_BYTES);
    const sentHash = createHash('sha256');
    const gotHash = createHash('sha256');
    let got = 0;
    const s = connect(port, '127.0.0.1');
    s.setNoDelay(true);
    s.on('data', (d) => {
      got += d.length;
      gotHash.update(d);
    });
    s.on('error', (e) => {
      stats.errors++;
      if (stats.errorSamples.length < 5) stats.errorSamples.push(e.message);
      resolve();
    });
    s.on('end', () => {
      stats.connections++;
      stats.bytesReceived += got;
      if (got !== total || gotHash.digest('hex') !== sentHash.digest('hex')) stats.mismatches++;
      s.end();
      resolve();
    });
    s.on('connect', async () => {
      let sent = 0;
      while (sent < total) {
        const n = Math.min(total - sent, 1 + Math.floor(Math.random() * 65536));
        const chunk = randomBytes(n);
        sentHash.update(chunk);
        sent += n;
        stats.bytesSent += n;
        if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
        if (Math.random() < 0.05) await sleep(Math.floor(Math.random() * 20));
      }
      s.end(); // half-close: the echo keeps flowing back until the backend's FIN
    });
  });
}

const held = [];
for (let i = 0; i < HOLD; i++) {
  try {
    held.push(
      await new Promise((res, rej) => {
        const s = connect(port, '127.0.0.1', () => res(s));
        s.on('error', rej);
      }),
    );
  } catch (err) {
    log(`holding stopped after ${held.length} connections: ${err.message}`);
    break;
  }
}
stats.heldConnections = held.length;
if (HOLD) log(`holding ${held.length} idle connections`);
const deadline = Date.now() + SECONDS * 1000;
let last = Date.now();
await Promise.all(
  Array.from({ length: CONNS }, async () => {
    while (Date.now() < deadline) {
      await oneConnection();
      if (Date.now() - last > 5000) {
        last = Date.now();
        log(
          `${stats.connections} connections, ${(stats.bytesSent / 2 ** 30).toFixed(2)} GiB sent, ${stats.mismatches} mismatches, Rss ${stats.maxRssMiB.toFixed(0)} MiB max`,
        );
      }
    }
  }),
);
sample();
// Held connections must still work after all that.
let heldOk = 0;
for (const s of held.slice(0, 100)) {
  const ok = await new Promise((res) => {
    s.once('data', () => res(true));
    s.write('x');
    setTimeout(() => res(false), 2000);
  });
  if (ok) heldOk++;
}
for (const s of held) s.destroy();
clearInterval(sampler);
await stopChild(proxy);
await stopEngines(engineName);
backend.kill('SIGKILL');
const summary = {
  seconds: SECONDS,
  concurrent: CONNS,
  ...stats,
  heldStillWorking: `${heldOk}/${Math.min(100, held.length)}`,
  lossless: stats.mismatches === 0 && stats.errors === 0 && stats.bytesReceived === stats.bytesSent,
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(summary.lossless && heldOk === Math.min(100, held.length) ? 0 : 1);
