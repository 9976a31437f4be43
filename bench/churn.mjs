// Connection churn (issue 21): N short connections through each contender to a target inside a
// network namespace (a container address, where loopback's TIME_WAIT reuse does not apply), with
// the host's own sysctls (this script sets none). Each connection sends 16 bytes and reads them
// back; then, by scenario:
//   client-first   the client closes first (the target closes after its EOF): the proxy is the
//                  first to close its leg toward the target
//   target-first   an HTTP/1.0-style target answers and closes first
//   concurrent     client-first with 20 clients at once
// Reports per contender: failed connections, the rate of each window of 5000 (first, slowest),
// and the TIME_WAIT entries left toward the target's port at the end. Every contender and
// scenario gets its own target port, so that each starts on a clean TIME_WAIT table.
// Usage: node bench/churn.mjs [--count 60000] [--window 5000] [--concurrency 20]
//        [--contenders direct,docker-proxy,socat,userland-proxy native,userland-proxy js]
//        [--scenarios client-first,target-first,concurrent]   (root; .ci/setup installs the reference)
// Writes bench/results/churn.json and churn.md.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createNamespace, deleteNamespace, timeWaitToward } from '../test/helpers/testbed.mjs';
import { cpuSeconds, enginePids, machine, OURS, REF, ROOT, sleep, spawnDockerMode, stopChild, stopEngines } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const COUNT = Number(opt('--count', '60000'));
const WINDOW = Number(opt('--window', '5000'));
const CONCURRENCY = Number(opt('--concurrency', '20'));
const CONTENDERS = opt('--contenders', 'direct,docker-proxy,socat,userland-proxy native,userland-proxy js').split(',');
const SCENARIOS = opt('--scenarios', 'client-first,target-first,concurrent').split(',');
/** One connection may take this long before it counts as failed (the loop is bounded too). */
const CONN_TIMEOUT_MS = 5000;
const log = (m) => process.stdout.write(`${m}\n`);

const NS = `upc${process.pid}`;
const HIF = `uc${process.pid % 100000}h`;
const NIF = `uc${process.pid % 100000}c`;
const NET = `10.${200 + (process.pid % 50)}.${(process.pid >> 6) % 250}`;
const TARGET = `${NET}.2`;
const cleanups = [];
async function cleanup() {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch {
      // best effort
    }
  }
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => void cleanup().then(() => process.exit(130)));

// The target: echo servers (they close after the client's EOF) and HTTP/1.0-style servers (they
// answer 16 bytes and close at once), one port each per contender and scenario.
const SERVER = `
const net = require('node:net');
for (const spec of process.argv.slice(1)) {
  const [mode, port] = spec.split(':');
  net.createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    let got = 0;
    c.on('data', (d) => {
      got += d.length;
      if (mode === 'echo') c.write(d);
      else if (got >= 16) c.end(d.subarray(0, 16));
    });
    c.on('end', () => c.end());
  }).listen(Number(port), process.env.HOST, 4096);
}
process.stdout.write('ready\\n');
`;

let nextPort = 32000;
/** Listening ports for our side of the contenders (below the ephemeral range). */
const hostPort = () => nextPort++;

/** The contenders: each maps a host port to the target port it is given. */
const START = {
  direct: async (tport) => ({ host: TARGET, port: tport, pids: [], stop: async () => {} }),
  'docker-proxy': async (tport) => {
    const port = hostPort();
    const { child } = await spawnDockerMode(REF, dockerArgs(port, tport));
    return { host: '127.0.0.1', port, pids: [child.pid], stop: () => stopChild(child) };
  },
  socat: async (tport) => {
    const port = hostPort();
    const child = spawn('socat', [`TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr,backlog=4096`, `TCP:${TARGET}:${tport}`], { stdio: 'ignore' });
    await sleep(300);
    return { host: '127.0.0.1', port, pids: [child.pid], tree: true, stop: () => stopChild(child) };
  },
  'userland-proxy native': (tport) => ours(tport, 'native'),
  'userland-proxy js': (tport) => ours(tport, 'js'),
};
const dockerArgs = (port, tport) => [
  '-proto',
  'tcp',
  '-host-ip',
  '127.0.0.1',
  '-host-port',
  String(port),
  '-container-ip',
  TARGET,
  '-container-port',
  String(tport),
];

/** Ours as dockerd runs it: the shim and an engine of this contender's own (counted with it). */
async function ours(tport, engine) {
  const port = hostPort();
  const name = `upc-${process.pid}-${engine}-${tport}`;
  const env = { ...process.env, USERLAND_PROXY_ENGINE: engine, USERLAND_PROXY_ENGINE_SOCKET: name, USERLAND_PROXY_LOG_LEVEL: 'warn' };
  const { child } = await spawnDockerMode(OURS, dockerArgs(port, tport), env);
  return {
    host: '127.0.0.1',
    port,
    pids: [child.pid, ...enginePids(name)],
    stop: async () => {
      await stopChild(child);
      await stopEngines(name);
    },
  };
}

/** One connection: send 16 bytes, read them back, then close per scenario; resolves true if all went right. */
function once(host, port, clientFirst) {
  return new Promise((res) => {
    const s = connect({ host, port, allowHalfOpen: true });
    let got = 0;
    let ok = false;
    const timer = setTimeout(() => s.destroy(), CONN_TIMEOUT_MS);
    s.on('connect', () => s.write(Buffer.alloc(16, 120)));
    s.on('data', (d) => {
      got += d.length;
      if (got === 16) {
        ok = true;
        if (clientFirst) s.end();
      }
    });
    s.on('end', () => {
      if (!clientFirst) s.end();
    });
    s.on('error', () => {
      ok = false;
    });
    s.on('close', () => {
      clearTimeout(timer);
      res(ok && got === 16);
    });
  });
}

/** N connections (`clients` at a time); per window the rate, and the failures. */
async function churn(host, port, scenario) {
  const clientFirst = scenario !== 'target-first';
  const clients = scenario === 'concurrent' ? CONCURRENCY : 1;
  let started = 0;
  let failed = 0;
  const doneAt = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (started < COUNT) {
        started++;
        if (!(await once(host, port, clientFirst))) failed++;
        doneAt.push(performance.now());
      }
    }),
  );
  const windows = [];
  for (let i = 0; i + WINDOW <= doneAt.length; i += WINDOW) {
    const from = i === 0 ? t0 : doneAt[i - 1];
    windows.push(Math.round(WINDOW / ((doneAt[i + WINDOW - 1] - from) / 1000)));
  }
  return { failed, windows, seconds: (performance.now() - t0) / 1000 };
}

/** CPU seconds of a contender's processes (and, with tree, their children: socat forks). */
function cpuOf(c) {
  let total = 0;
  for (const pid of c.pids) {
    total += cpuSeconds(pid);
    if (c.tree)
      try {
        for (const k of execFileSync('pgrep', ['-P', String(pid)])
          .toString()
          .split('\n')
          .filter(Boolean))
          total += cpuSeconds(Number(k));
      } catch {
        // no children left
      }
  }
  return total;
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('churn needs root (a network namespace)');
  const names = CONTENDERS.filter((n) => {
    if (!START[n]) throw new Error(`unknown contender ${n}`);
    const missing = (n === 'docker-proxy' && !existsSync(REF)) || (n === 'socat' && !existsSync('/usr/bin/socat'));
    if (missing) log(`${n} missing (bash .ci/setup installs the reference): left out`);
    return !missing;
  });
  log(
    `setting up the target ${TARGET} (${NS}); ephemeral range ${execFileSync('sysctl', ['-n', 'net.ipv4.ip_local_port_range']).toString().trim().replace(/\s+/, '-')}, tcp_tw_reuse ${execFileSync('sysctl', ['-n', 'net.ipv4.tcp_tw_reuse']).toString().trim()} (left as they are)`,
  );
  createNamespace({ name: NS, hostIf: HIF, nsIf: NIF, v4: NET });
  cleanups.push(() => deleteNamespace(NS, HIF));
  const plan = [];
  let tport = 40000;
  for (const scenario of SCENARIOS) for (const name of names) plan.push({ scenario, name, tport: tport++ });
  const server = spawn(
    'ip',
    ['netns', 'exec', NS, process.execPath, '-e', SERVER, ...plan.map((p) => `${p.scenario === 'target-first' ? 'http' : 'echo'}:${p.tport}`)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, HOST: TARGET },
    },
  );
  cleanups.push(() => server.kill('SIGKILL'));
  await new Promise((res, rej) => {
    server.stdout.once('data', res);
    server.once('exit', () => rej(new Error('the target did not start')));
  });
  const results = {};
  for (const p of plan) {
    const c = await START[p.name](p.tport);
    cleanups.push(c.stop);
    const cpu0 = cpuOf(c);
    log(`${p.scenario}: ${p.name}, ${COUNT} connections to ${TARGET}:${p.tport}`);
    const r = await churn(c.host, c.port, p.scenario);
    const cpu = cpuOf(c) - cpu0;
    await sleep(500); // the last closes settle
    const tw = timeWaitToward(TARGET, p.tport);
    await c.stop();
    cleanups.splice(cleanups.indexOf(c.stop), 1);
    const first = r.windows[0] ?? 0;
    const slowest = r.windows.length ? Math.min(...r.windows) : 0;
    results[p.scenario] ??= {};
    results[p.scenario][p.name] = { ...r, first, slowest, timeWait: tw, cpuMsPer1000: Math.round((cpu * 1e6) / COUNT) };
    log(
      `  failed ${r.failed}, windows ${r.windows.join(' ')} conn/s, slowest/first ${(slowest / first).toFixed(2)}, TIME_WAIT left ${tw}, ${r.seconds.toFixed(1)} s`,
    );
  }
  await cleanup();
  const env = machine();
  const md = [
    `# Connection churn (${new Date().toISOString().slice(0, 10)})`,
    '',
    `${COUNT} connections per row (16 bytes each way), windows of ${WINDOW}; ${env}.`,
    "Host sysctls as they were (none set by the bench). CPU: the contender's processes only, ms per 1000 connections.",
    '',
  ];
  for (const [scenario, by] of Object.entries(results)) {
    md.push(`## ${scenario}${scenario === 'concurrent' ? ` (${CONCURRENCY} clients)` : ''}`, '');
    md.push('| | failed | first window | slowest window | slowest / first | TIME_WAIT left | CPU ms / 1000 conn |', '|---|---|---|---|---|---|---|');
    for (const [name, r] of Object.entries(by))
      md.push(
        `| ${name} | ${r.failed} | ${r.first}/s | ${r.slowest}/s | ${(r.slowest / r.first).toFixed(2)} | ${r.timeWait} | ${name === 'direct' ? '-' : r.cpuMsPer1000} |`,
      );
    md.push('');
  }
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(
    join(ROOT, 'bench/results/churn.json'),
    `${JSON.stringify({ date: new Date().toISOString(), machine: env, count: COUNT, results }, null, 2)}\n`,
  );
  writeFileSync(join(ROOT, 'bench/results/churn.md'), `${md.join('\n')}\n`);
  log(md.join('\n'));
}

main().catch(async (err) => {
  await cleanup();
  console.error(`churn: ${err.message}`);
  process.exit(1);
});
