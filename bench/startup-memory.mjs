#!/usr/bin/env node
// Cost of one docker-mode process, ours next to the reference docker-proxy, in one run. Ours is a
// Node process per port here (USERLAND_PROXY_SHARED=false); shared mode's per-port cost (a shim and
// one engine) is bench/ports.mjs's.
//   startup   spawn() to "0\n" on the fd-3 pipe, median (and min-max) of N alternating runs
//   memory    Rss and Private_Dirty from /proc/PID/smaps_rollup: idle after start, and after a
//             1 GiB TCP transfer through the proxy (iperf3 client -> proxy -> iperf3 -s, loopback)
// Usage: node bench/startup-memory.mjs [--runs 20] [--bytes 1G]   (needs .ci/setup and iperf3)
// Writes bench/results/startup-memory.json and prints a Markdown table.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OURS, REF, ROOT, freePort, machine as machineText, median, mem, sleep, spawnDockerMode, stopChild as stop } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const RUNS = Number(opt('--runs', '20'));
const BYTES = opt('--bytes', '1G');
const contenders = [
  ['docker-proxy', REF, 'js'],
  ['userland-proxy js', OURS, 'js'],
  ['userland-proxy native', OURS, 'native'],
];
for (const [name, bin] of contenders) if (!existsSync(bin)) throw new Error(`${name} not found at ${bin} (run .ci/setup)`);
const start = (bin, engine, port, targetPort) =>
  spawnDockerMode(
    bin,
    ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(port), '-container-ip', '127.0.0.1', '-container-port', String(targetPort)],
    { ...process.env, USERLAND_PROXY_ENGINE: engine, USERLAND_PROXY_SHARED: 'false' },
  );

const results = Object.fromEntries(contenders.map(([n]) => [n, { startupMs: [] }]));
const targetPort = await freePort();
process.stdout.write(`startup: ${RUNS} runs each, alternating\n`);
for (let i = 0; i < RUNS; i++) {
  for (const [name, bin, engine] of i % 2 ? [...contenders].reverse() : contenders) {
    const { child, ms } = await start(bin, engine, await freePort(), targetPort);
    results[name].startupMs.push(ms);
    await stop(child);
  }
}
const iperfPort = await freePort();
const server = spawn('iperf3', ['-s', '-p', String(iperfPort), '-B', '127.0.0.1'], { stdio: 'ignore' });
await sleep(300);
try {
  for (const [name, bin, engine] of contenders) {
    const port = await freePort();
    const { child } = await start(bin, engine, port, iperfPort);
    await sleep(500);
    results[name].idle = mem(child.pid);
    process.stdout.write(`${name}: moving ${BYTES} through the proxy\n`);
    execFileSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-n', BYTES, '-J'], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 120_000 });
    await sleep(1000);
    results[name].afterTransfer = mem(child.pid);
    await stop(child);
  }
} finally {
  server.kill('SIGKILL');
}

const machine = machineText();
const rows = contenders.map(([n]) => {
  const r = results[n];
  const s = r.startupMs;
  return `| ${n} | ${median(s).toFixed(1)} (${Math.min(...s).toFixed(1)}-${Math.max(...s).toFixed(1)}) | ${r.idle.privateDirtyMiB.toFixed(1)} | ${r.idle.rssMiB.toFixed(1)} | ${r.afterTransfer.privateDirtyMiB.toFixed(1)} | ${r.afterTransfer.rssMiB.toFixed(1)} |`;
});
const table = [
  `Measured ${new Date().toISOString().slice(0, 10)} on ${machine}; ${RUNS} startups each, ${BYTES} transfer.`,
  '',
  '| process | spawn to `0\\n`, ms: median (min-max) | idle Private_Dirty MiB | idle RSS MiB | after transfer Private_Dirty MiB | after transfer RSS MiB |',
  '|---|---|---|---|---|---|',
  ...rows,
].join('\n');
writeFileSync(
  join(ROOT, 'bench/results/startup-memory.json'),
  `${JSON.stringify({ date: new Date().toISOString(), machine, runs: RUNS, bytes: BYTES, results }, null, 2)}\n`,
);
writeFileSync(join(ROOT, 'bench/results/startup-memory.md'), `${table}\n`);
process.stdout.write(`${table}\n`);
