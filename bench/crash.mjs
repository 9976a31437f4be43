#!/usr/bin/env node
// What a crash of the process that relays costs (issue 18), every contender side by side in one
// run: --ports mappings in docker mode, --conns established TCP connections per port (an echo
// round trip each), then SIGKILL of the process that relays them:
//   userland-proxy shared    the engine (every port's connections are in it)
//   userland-proxy per-port  one port's Node process
//   docker-proxy             one port's process (the reference)
// Then, per contender: how every established connection ended (reset, clean FIN: a truncated
// stream passed off as complete, or still working), and how long until every port that was served
// serves a new connection again (the shared engine's shims re-register with a new engine; a
// per-port process or docker-proxy is gone until dockerd restarts the container: "never" here).
// Medians of --reps runs. --root DIR measures another checkout's build (e.g. the base commit).
// Usage: node bench/crash.mjs [--ports 20] [--conns 10] [--reps 3] [--root DIR]
// Traffic: 127.0.0.1 only. Every process and socket it starts is gone when it ends.
import { createServer, connect } from 'node:net';
import { join, resolve } from 'node:path';
import { enginePids, freePort, machine, median, REF, ROOT, sleep, spawnDockerMode, stopChild, stopEngines } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const PORTS = Number(opt('--ports', '20'));
const CONNS = Number(opt('--conns', '10'));
const REPS = Number(opt('--reps', '3'));
const OURS = join(resolve(opt('--root', ROOT)), 'bin/userland-proxy');
const log = (m) => process.stdout.write(`${m}\n`);

const echo = createServer((c) => {
  c.on('error', () => {});
  c.pipe(c);
});
await new Promise((r) => echo.listen(0, '127.0.0.1', r));
const ECHO = echo.address().port;

/** An open connection through the proxy, with how it ended (once it did). */
function open(port) {
  return new Promise((res, rej) => {
    const s = connect(port, '127.0.0.1');
    const c = { s, end: '' };
    s.on('error', (e) => {
      c.end ||= e.code ?? e.message;
    });
    s.on('end', () => {
      c.end ||= 'clean FIN';
    });
    s.once('connect', () => {
      s.once('data', () => res(c));
      s.write('x');
    });
    s.once('error', rej);
  });
}

/** True when a new connection to the port echoes within 300 ms. */
function serves(port) {
  return new Promise((res) => {
    const s = connect(port, '127.0.0.1');
    const t = setTimeout(() => done(false), 300);
    const done = (ok) => {
      clearTimeout(t);
      s.destroy();
      res(ok);
    };
    s.on('error', () => done(false));
    s.once('connect', () => s.write('p'));
    s.once('data', () => done(true));
  });
}

/** Whether an established connection still echoes (within 1 s) after the kill. */
function stillWorks(c) {
  if (c.end) return Promise.resolve(c.end);
  return new Promise((res) => {
    const t = setTimeout(() => res(c.end || 'hung'), 1000);
    c.s.once('data', () => {
      clearTimeout(t);
      res('working');
    });
    c.s.write('y', () => {});
  });
}

async function run(contender) {
  const name = `upb-crash-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const env = { ...process.env, ...contender.env, USERLAND_PROXY_ENGINE_SOCKET: name };
  const ports = [];
  for (let i = 0; i < PORTS; i++) ports.push(await freePort());
  const procs = [];
  for (const p of ports) {
    const argv = ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(p), '-container-ip', '127.0.0.1', '-container-port', String(ECHO)];
    procs.push((await spawnDockerMode(contender.bin, argv, env)).child);
  }
  const conns = [];
  for (const p of ports) for (let i = 0; i < CONNS; i++) conns.push(await open(p));
  const victim = contender.shared ? enginePids(name)[0] : procs[0].pid;
  const hit = contender.shared ? ports : ports.slice(0, 1);
  process.kill(victim, 'SIGKILL');
  const t0 = Date.now();
  const back = new Map();
  while (Date.now() - t0 < 10_000 && back.size < hit.length) {
    for (const p of hit) if (!back.has(p) && (await serves(p))) back.set(p, Date.now() - t0);
    await sleep(10);
  }
  const ends = {};
  for (const e of await Promise.all(conns.map(stillWorks))) ends[e] = (ends[e] ?? 0) + 1;
  for (const c of conns) c.s.destroy();
  for (const c of procs) await stopChild(c);
  await stopEngines(name);
  return { ends, lost: conns.length - (ends.working ?? 0), servedAgainMs: back.size === hit.length ? Math.max(...back.values()) : null, portsHit: hit.length };
}

const CONTENDERS = [
  { name: 'userland-proxy shared (engine SIGKILL)', bin: OURS, shared: true, env: { USERLAND_PROXY_SHARED: 'true' } },
  { name: 'userland-proxy per-port (one process SIGKILL)', bin: OURS, shared: false, env: { USERLAND_PROXY_SHARED: 'false' } },
  { name: 'docker-proxy (one process SIGKILL)', bin: REF, shared: false, env: {} },
];
log(`${machine()}; ${PORTS} ports x ${CONNS} connections; ours from ${OURS}; medians of ${REPS}`);
log('| contender | ports hit | connections lost (of all) | how they ended | every hit port serves again after |');
log('|---|---|---|---|---|');
for (const c of CONTENDERS) {
  const runs = [];
  for (let i = 0; i < REPS; i++) runs.push(await run(c));
  const ms = runs.map((r) => r.servedAgainMs);
  const again = ms.every((m) => m !== null) ? `${median(ms)} ms (runs: ${ms.join(', ')})` : 'never (until dockerd restarts it)';
  const ends = runs
    .map((r) =>
      Object.entries(r.ends)
        .map(([k, v]) => `${v} ${k}`)
        .join(', '),
    )
    .join(' / ');
  log(`| ${c.name} | ${runs[0].portsHit} | ${median(runs.map((r) => r.lost))} of ${PORTS * CONNS} | ${ends} | ${again} |`);
}
echo.close();
