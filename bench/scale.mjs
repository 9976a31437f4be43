#!/usr/bin/env node
// Scale of one standalone process: a 1000-port TCP range plus a 100-port UDP range published on
// 0.0.0.0 and [::] (what Docker serves with 2200 docker-proxy processes: 1100 ports x IPv4 and
// IPv6), i.e. four mappings, four workers, 2200 sockets. Measures spawn to
// "ready" and idle Rss / Private_Dirty, next to one reference docker-proxy process in the same run.
// Usage: node bench/scale.mjs [--tcp 1000] [--udp 100] [--base 20000]
// Writes bench/results/scale.json and bench/results/scale.md.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REF, ROOT, mem, sleep } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const TCP = Number(opt('--tcp', '1000'));
const UDP = Number(opt('--udp', '100'));
const BASE = Number(opt('--base', '20000'));

const runs = [];
for (let i = 0; i < 3; i++) {
  const t0 = process.hrtime.bigint();
  const specs = ['0.0.0.0', '[::]'].flatMap((h) => [
    '-p',
    `${h}:${BASE}-${BASE + TCP - 1}:127.0.0.1:${BASE + 10000}-${BASE + 10000 + TCP - 1}`,
    '-p',
    `${h}:${BASE}-${BASE + UDP - 1}:127.0.0.1:${BASE + 10000}-${BASE + 10000 + UDP - 1}/udp`,
  ]);
  const child = spawn(join(ROOT, 'bin/userland-proxy'), ['run', ...specs, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const readyMs = await new Promise((res, rej) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('ready:')) res(Number(process.hrtime.bigint() - t0) / 1e6);
    });
    child.once('exit', (c) => rej(new Error(`exited ${c}`)));
  });
  await sleep(1000);
  const m = mem(child.pid);
  const fds = execFileSync('ls', [`/proc/${child.pid}/fd`])
    .toString()
    .trim()
    .split('\n').length;
  runs.push({ readyMs, ...m, fds });
  await new Promise((r) => {
    child.once('exit', r);
    child.kill('SIGTERM');
  });
  process.stdout.write(
    `run ${i + 1}: ready in ${readyMs.toFixed(0)} ms, Rss ${m.rssMiB.toFixed(1)} MiB, Private_Dirty ${m.privateDirtyMiB.toFixed(1)} MiB, ${fds} fds\n`,
  );
}
let ref = null;
if (existsSync(REF)) {
  const c = spawn(
    REF,
    ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(BASE), '-container-ip', '127.0.0.1', '-container-port', String(BASE + 10000)],
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe'] },
  );
  await sleep(500);
  ref = mem(c.pid);
  c.kill('SIGINT');
}
const med = (k) => runs.map((r) => r[k]).sort((a, b) => a - b)[1];
const procs = 2 * (TCP + UDP);
const table = [
  `Measured ${new Date().toISOString().slice(0, 10)}: one \`userland-proxy run\` with a ${TCP}-port TCP range and a ${UDP}-port UDP range, each on 0.0.0.0 and [::] (4 mappings, 4 workers, ${procs} sockets; median of 3), against what Docker needs for the same: ${procs} docker-proxy processes (one per port per address family), extrapolated from one reference process measured in the same run.`,
  '',
  '| | processes | ready, ms | Rss, MiB | Private_Dirty, MiB |',
  '|---|---|---|---|---|',
  `| userland-proxy (one process, 4 workers) | 1 | ${med('readyMs').toFixed(0)} | ${med('rssMiB').toFixed(1)} | ${med('privateDirtyMiB').toFixed(1)} |`,
  ref
    ? `| docker-proxy x ${procs} | ${procs} | - | ${(ref.rssMiB * procs).toFixed(0)} (${ref.rssMiB.toFixed(1)} each) | ${(ref.privateDirtyMiB * procs).toFixed(0)} (${ref.privateDirtyMiB.toFixed(1)} each) |`
    : '| docker-proxy | (reference not found) | | | |',
].join('\n');
writeFileSync(join(ROOT, 'bench/results/scale.json'), `${JSON.stringify({ date: new Date().toISOString(), tcp: TCP, udp: UDP, runs, ref }, null, 2)}\n`);
writeFileSync(join(ROOT, 'bench/results/scale.md'), `${table}\n`);
process.stdout.write(`${table}\n`);
