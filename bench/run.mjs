#!/usr/bin/env node
// The benchmark harness: every contender side by side in one run, on the path a runtime uses
// (a client on 127.0.0.1 -> the contender -> a "container" in a network namespace behind a veth).
// Contenders alternate within each repetition; results are medians with min-max and ratios to
// the reference docker-proxy. See bench/README.md. Needs root (namespace, iptables).
//
//   node bench/run.mjs [--quick] [--reps N] [--scenarios a,b] [--contenders a,b] [--out DIR]
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { OURS, REF, ROOT, cpuSeconds, enginePids, machine, mem, sleep, spawnDockerMode, stopChild, stopEngines } from './lib.mjs';
import { renderMarkdown, renderSvg } from './report.mjs';
import { createNamespace, deleteNamespace } from '../test/helpers/testbed.mjs';

const args = process.argv.slice(2);
const flag = (n) => args.includes(n);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const QUICK = flag('--quick');
const REPS = Number(opt('--reps', QUICK ? '1' : '3'));
const SECS = QUICK ? 1 : 3;
const OUT = opt('--out', join(ROOT, 'bench/results'));
const ALL_SCENARIOS = ['bulk1', 'bulk4', 'http', 'short', 'short20', 'udp64', 'udp1400', 'memory', 'startup'];
const SCENARIOS = opt('--scenarios', QUICK ? 'bulk1,http,short,short20,udp1400,memory' : ALL_SCENARIOS.join(',')).split(',');
// 9000 and not 10 000: a proxy holds two fds per connection and RLIMIT_NOFILE's hard limit here
// is 20000 (docker-proxy and haproxy are bound by it as well).
const IDLE_CONNS = Number(opt('--idle-conns', QUICK ? '1000' : '9000'));
const SHORT_CONNS = Number(opt('--short-conns', QUICK ? '300' : '2000'));
const STARTUPS = QUICK ? 5 : 20;
/** Offered UDP rate of the fixed-rate rows, and the ladder of the capacity search, datagrams/s. */
const UDP_PPS = Number(opt('--udp-pps', '100000'));
const UDP_LADDER = [50_000, 60_000, 70_000, 80_000, 90_000, 100_000, 125_000, 150_000, 200_000, 300_000];
const t0 = Date.now();
const log = (msg) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
if (process.getuid?.() !== 0) {
  process.stderr.write('bench: needs root (network namespace, iptables); run: sudo npm run bench\n');
  process.exit(2);
}

// ---- the "container": a namespace behind a veth, with iperf3, an HTTP server and a TCP echo ----
const NS = `upb${process.pid}`;
const HIF = `ub${process.pid % 100000}h`;
const NIF = `ub${process.pid % 100000}c`;
const NET = `10.${150 + (process.pid % 50)}.${(process.pid >> 6) % 250}`;
const BACKEND = `${NET}.2`;
// Each contender gets its own echo port on the backend: short-connection runs leave thousands of
// TIME_WAIT entries on the proxy-to-container leg, which must not spill into the next contender.
const PORTS = { iperf: 5201, http: 8000, echo: 7000 };
/** The backend ports one contender forwards to. */
// Each contender has its own iperf3 server and echo port: datagrams a deep-buffered contender
// still delivers after its run must not reach the next contender's test (iperf3 takes a stray
// datagram for a new client's UDP handshake and the real client then waits forever).
const targets = (idx) => ({ ...PORTS, iperf: PORTS.iperf + idx, echo: PORTS.echo + idx });
const cleanups = [];
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'] });
// Raise the soft fd limit to the hard one (this sandbox's hard limit is 20000, and raising it
// needs CAP_SYS_RESOURCE): the idle-connection scenario needs two fds per connection.
const RAISE = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null;';

async function cleanup() {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch {
      /* best effort */
    }
  }
}
for (const sig of ['SIGINT', 'SIGTERM'])
  process.on(sig, () => {
    void cleanup().then(() => process.exit(130));
  });

function setupNamespace() {
  createNamespace({ name: NS, hostIf: HIF, nsIf: NIF, v4: NET });
  cleanups.push(() => deleteNamespace(NS, HIF));
  const procs = [
    ...Object.keys(CONTENDERS).map((_, i) => spawn('ip', ['netns', 'exec', NS, 'iperf3', '-s', '-p', String(PORTS.iperf + i)], { stdio: 'ignore' })),
    spawn(
      'ip',
      [
        'netns',
        'exec',
        NS,
        'sh',
        '-c',
        `${RAISE} exec "$0" "$@"`,
        process.execPath,
        join(ROOT, 'test/helpers/backend.mjs'),
        '--http',
        String(PORTS.http),
        ...Object.keys(CONTENDERS).flatMap((_, i) => ['--echo', String(PORTS.echo + i)]),
        '--host',
        BACKEND,
      ],
      { stdio: ['pipe', 'ignore', 'ignore'] },
    ),
  ];
  for (const p of procs) cleanups.push(() => p.kill('SIGKILL'));
}

// ---- contenders: each maps local ports (one per backend service) to the container ----
let nextPort = 31000;
function portsFor() {
  const base = nextPort;
  nextPort += 10;
  return { iperf: base, http: base + 1, echo: base + 2 };
}

/**
 * Docker-mode contenders: one proxy per port and protocol, started as dockerd does. Ours in shared
 * mode (the default) runs shims and one engine, named for this contender, which is counted with
 * them (CPU, memory) and holds the idle connections; `shared: false` is a Node process per port.
 */
async function startDockerModes(bin, idx, engine = 'js', shared = true) {
  const ports = portsFor();
  const to = targets(idx);
  const children = [];
  const specs = [
    ['tcp', 'iperf'],
    ['udp', 'iperf'],
    ['tcp', 'http'],
    ['tcp', 'echo'],
  ];
  const name = `upb-${process.pid}-${idx}`;
  const env = bin === REF ? '' : `USERLAND_PROXY_ENGINE=${engine} USERLAND_PROXY_SHARED=${shared} USERLAND_PROXY_ENGINE_SOCKET=${name}`;
  for (const [proto, svc] of specs) {
    const { child } = await spawnDockerMode('/bin/sh', [
      '-c',
      `${RAISE} ${env} exec "$0" "$@"`,
      bin,
      '-proto',
      proto,
      '-host-ip',
      '127.0.0.1',
      '-host-port',
      String(ports[svc]),
      '-container-ip',
      BACKEND,
      '-container-port',
      String(to[svc]),
    ]);
    children.push(child);
  }
  const engines = bin === REF ? [] : enginePids(name);
  if (shared && bin !== REF && engines.length !== 1) throw new Error(`${bin}: expected one shared engine named ${name}, found ${engines.length}`);
  const stop = async () => {
    await Promise.all(children.map(stopChild));
    await stopEngines(name);
  };
  cleanups.push(() => stopEngines(name));
  // The process that holds the echo port's idle connections: its own, or the engine.
  const echoPid = engines[0] ?? children[3].pid;
  return { host: '127.0.0.1', ports, pids: [...children.map((c) => c.pid), ...engines], echoPid, udp: true, stop };
}

async function waitListening(port) {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((res) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        res(true);
      });
      s.on('error', () => res(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port}`);
}

const CONTENDERS = {
  direct: async (idx) => ({ host: BACKEND, ports: targets(idx), pids: [], udp: true, stop: async () => {} }),
  'iptables-dnat': async (idx) => {
    const ports = portsFor();
    const to = targets(idx);
    const old = execFileSync('sysctl', ['-n', 'net.ipv4.conf.all.route_localnet']).toString().trim();
    sh('sysctl -qw net.ipv4.conf.all.route_localnet=1');
    const chain = `UPB${process.pid}`;
    const rules = [];
    sh(`iptables -t nat -N ${chain}`);
    rules.push(`-t nat -A OUTPUT -j ${chain}`, `-t nat -A POSTROUTING -o ${HIF} -m addrtype --src-type LOCAL -j MASQUERADE`);
    for (const [svc, proto] of [
      ['iperf', 'tcp'],
      ['iperf', 'udp'],
      ['http', 'tcp'],
      ['echo', 'tcp'],
    ]) {
      rules.push(`-t nat -A ${chain} -d 127.0.0.1/32 -p ${proto} --dport ${ports[svc]} -j DNAT --to-destination ${BACKEND}:${to[svc]}`);
    }
    for (const r of rules) sh(`iptables ${r}`);
    const stop = async () => {
      for (const r of rules.reverse()) sh(`iptables ${r.replace(' -A ', ' -D ')}`);
      sh(`iptables -t nat -X ${chain}`);
      sh(`sysctl -qw net.ipv4.conf.all.route_localnet=${old}`);
    };
    return { host: '127.0.0.1', ports, pids: [], udp: true, stop };
  },
  'docker-proxy': (idx) => startDockerModes(REF, idx),
  socat: async (idx) => {
    const ports = portsFor();
    const to = targets(idx);
    const children = ['iperf', 'http', 'echo'].map((svc) =>
      spawn('sh', ['-c', `${RAISE} exec socat -b131072 TCP-LISTEN:${ports[svc]},bind=127.0.0.1,fork,reuseaddr TCP:${BACKEND}:${to[svc]}`], { stdio: 'ignore' }),
    );
    for (const svc of ['iperf', 'http', 'echo']) await waitListening(ports[svc]);
    // socat forks a process per connection: count the whole process group.
    return {
      host: '127.0.0.1',
      ports,
      pids: children.map((c) => c.pid),
      tree: true,
      udp: false,
      stop: async () => {
        sh(`pkill -f "socat -b131072 TCP-LISTEN:(${ports.iperf}|${ports.http}|${ports.echo}),"`);
        await Promise.all(children.map(stopChild));
      },
    };
  },
  haproxy: async (idx) => {
    const ports = portsFor();
    const to = targets(idx);
    const dir = mkdtempSync(join(tmpdir(), 'upb-haproxy-'));
    const cfg = [
      'global',
      '  maxconn 9500',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 1h',
      '  timeout server 1h',
      ...['iperf', 'http', 'echo'].flatMap((svc) => [`listen ${svc}`, `  bind 127.0.0.1:${ports[svc]}`, `  server b ${BACKEND}:${to[svc]}`]),
    ].join('\n');
    writeFileSync(join(dir, 'haproxy.cfg'), `${cfg}\n`);
    const child = spawn('sh', ['-c', `${RAISE} exec haproxy -db -f ${join(dir, 'haproxy.cfg')}`], { stdio: 'ignore' });
    for (const svc of ['iperf', 'http', 'echo']) await waitListening(ports[svc]);
    return {
      host: '127.0.0.1',
      ports,
      pids: [child.pid],
      udp: false,
      stop: async () => {
        await stopChild(child);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  'userland-proxy js': (idx) => startDockerModes(OURS, idx, 'js'),
  'userland-proxy native': (idx) => startDockerModes(OURS, idx, 'native'),
  'userland-proxy native per-port': (idx) => startDockerModes(OURS, idx, 'native', false),
  'userland-proxy standalone': async (idx) => {
    const ports = portsFor();
    const to = targets(idx);
    const child = spawn(
      'sh',
      [
        '-c',
        `${RAISE} exec "$0" "$@"`,
        OURS,
        'run',
        '--log-level',
        'warn',
        '--engine',
        'native',
        '-p',
        `127.0.0.1:${ports.iperf}:${BACKEND}:${to.iperf}`,
        '-p',
        `127.0.0.1:${ports.iperf}:${BACKEND}:${to.iperf}/udp`,
        '-p',
        `127.0.0.1:${ports.http}:${BACKEND}:${PORTS.http}`,
        '-p',
        `127.0.0.1:${ports.echo}:${BACKEND}:${to.echo}`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    await new Promise((res, rej) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('ready:')) res();
      });
      child.once('exit', (c) => rej(new Error(`standalone exited ${c}`)));
    });
    return { host: '127.0.0.1', ports, pids: [child.pid], udp: true, stop: () => stopChild(child) };
  },
};
// --alt PATH adds another build of ours (a checkout's bin/userland-proxy) for A/B comparisons.
const ALT = opt('--alt', null);
if (ALT) CONTENDERS['userland-proxy alt'] = (idx) => startDockerModes(ALT, idx, 'native');
const NAMES = opt('--contenders', Object.keys(CONTENDERS).join(',')).split(',');
for (const n of NAMES) if (!CONTENDERS[n]) throw new Error(`unknown contender ${n}; known: ${Object.keys(CONTENDERS).join(', ')}`);

// ---- measurements ----
function allPids(c) {
  if (!c.tree) return c.pids;
  const out = execFileSync('ps', ['-eo', 'pid=,ppid='])
    .toString()
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number));
  const set = new Set(c.pids);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of out)
      if (set.has(ppid) && !set.has(pid)) {
        set.add(pid);
        grew = true;
      }
  }
  return [...set];
}
const cpuOf = (c) => allPids(c).reduce((a, p) => a + cpuSeconds(p), 0);
function memOf(c) {
  const pids = allPids(c);
  const sum = pids
    .map(mem)
    .reduce((a, m) => ({ rssMiB: a.rssMiB + m.rssMiB, privateDirtyMiB: a.privateDirtyMiB + m.privateDirtyMiB }), { rssMiB: 0, privateDirtyMiB: 0 });
  return { ...sum, processes: pids.length, privateDirtyPerProcessMiB: sum.privateDirtyMiB / pids.length };
}

function iperf(c, extra) {
  return iperfJson(['-c', c.host, '-p', String(c.ports.iperf), '-t', String(SECS), '-O', '1', ...extra], SECS);
}

async function bulk(c, streams) {
  const cpu0 = cpuOf(c);
  const j = iperf(c, streams > 1 ? ['-P', String(streams)] : []);
  const cpu = cpuOf(c) - cpu0;
  const bytes = j.end.sum_received.bytes;
  return { gbps: j.end.sum_received.bits_per_second / 1e9, cpuPerGiB: c.pids.length || c.tree ? cpu / (bytes / 2 ** 30) : null };
}

async function http(c) {
  const r = await autocannon({ url: `http://${c.host}:${c.ports.http}/`, connections: 16, duration: SECS });
  return { rps: r.requests.average, p50ms: r.latency.p50, p99ms: r.latency.p99, errors: r.errors + r.non2xx };
}

/** One short connection: connect, send 100 B, read the echo, close; resolves with its latency, ms. */
function oneShort(c, payload) {
  const t = performance.now();
  return new Promise((res, rej) => {
    const s = connect(c.ports.echo, c.host, () => s.write(payload));
    let got = 0;
    s.on('data', (d) => {
      got += d.length;
      if (got >= payload.length) s.destroy();
    });
    s.on('close', () => (got >= payload.length ? res(performance.now() - t) : rej(new Error('short read'))));
    s.on('error', rej);
  });
}

/**
 * SHORT_CONNS short connections from `clients` concurrent clients, each in sequence: conn/s, p99,
 * and the contender's CPU time per connection (user+system, microseconds).
 */
async function short(c, clients = 1) {
  const lat = [];
  const payload = Buffer.alloc(100, 7);
  let left = SHORT_CONNS;
  const cpu0 = cpuOf(c);
  const start = performance.now();
  const client = async () => {
    while (left > 0) {
      left--;
      lat.push(await oneShort(c, payload));
    }
  };
  await Promise.all(Array.from({ length: clients }, client));
  const secs = (performance.now() - start) / 1000;
  const cpu = cpuOf(c) - cpu0;
  lat.sort((a, b) => a - b);
  return {
    connPerSec: SHORT_CONNS / secs,
    p99ms: lat[Math.floor(lat.length * 0.99)],
    cpuUsPerConn: c.pids.length || c.tree ? (cpu / SHORT_CONNS) * 1e6 : null,
  };
}

/** Runs iperf3 and parses its JSON; a failure carries iperf3's own error text. */
function iperfJson(argv, secs) {
  try {
    return JSON.parse(execFileSync('timeout', [String(secs + 20), 'iperf3', ...argv, '-J'], { maxBuffer: 64 << 20 }).toString());
  } catch (err) {
    let why = err.message;
    try {
      why = JSON.parse(err.stdout.toString()).error ?? why;
    } catch {
      /* not JSON */
    }
    throw new Error(`iperf3: ${why}`);
  }
}

function udpAt(c, size, pps, secs) {
  // No omitted first second for UDP: iperf3 then counts sent and received over different spans.
  // -w 4M gives iperf3's own sockets (client and server) room for bursts, so that losses are the
  // contender's, not the load generator's; the same for every contender.
  const j = iperfJson(
    ['-c', c.host, '-p', String(c.ports.iperf), '-t', String(secs), '-u', '-w', '4M', '-l', String(size), '-b', String(size * 8 * pps)],
    secs,
  );
  const delivered = j.end.sum_received.bytes / size;
  return { deliveredPps: delivered / j.end.sum_received.seconds, lossPct: 100 * Math.max(0, 1 - delivered / j.end.sum_sent.packets) };
}

/**
 * UDP at a fixed offered rate (the row reported at UDP_PPS) and capacity: offered rates rise
 * along a ladder until loss exceeds 1 %; capacity is the datagrams/s delivered at the highest
 * rate that stayed within 1 %.
 */
async function udp(c, size, rep) {
  if (!c.udp) return null;
  const fixed = udpAt(c, size, UDP_PPS, SECS);
  // The capacity ladder runs in the first repetition only: it keeps the full run within 10 minutes.
  if (rep > 0) return fixed;
  let capacityPps = 0;
  let ladderStop = null;
  for (const pps of UDP_LADDER) {
    await sleep(200);
    let r;
    try {
      r = pps === UDP_PPS ? fixed : udpAt(c, size, pps, 1);
    } catch (err) {
      // A step iperf3 itself could not finish counts as failed: capacity is the last good step.
      ladderStop = `${pps}/s: ${err.message}`;
      break;
    }
    if (r.lossPct > 1) break;
    capacityPps = r.deliveredPps;
  }
  return { ...fixed, capacityPps, ...(ladderStop ? { ladderStop } : {}) };
}

async function idleConnections(c) {
  const socks = [];
  try {
    for (let i = 0; i < IDLE_CONNS; i++) {
      socks.push(
        await new Promise((res, rej) => {
          const s = connect(c.ports.echo, c.host, () => res(s));
          s.on('error', rej);
        }),
      );
    }
  } catch (err) {
    for (const s of socks) s.destroy();
    const alive = allPids(c).every((p) => existsSync(`/proc/${p}`));
    return { error: `after ${socks.length} connections: ${err.message}${alive ? '' : ' (the proxy process exited)'}` };
  }
  // A round trip on the last one proves the proxy is through with all of them; a proxy that
  // refused some (its fd budget) has closed them: count what it really holds, bounded in time.
  await sleep(500);
  const open = socks.filter((s) => !s.destroyed && s.readyState === 'open');
  const echoed = await new Promise((res) => {
    const s = open[open.length - 1];
    if (!s) return res(false);
    const t = setTimeout(() => res(false), 5000);
    s.once('data', () => {
      clearTimeout(t);
      res(true);
    });
    s.write('x');
  });
  if (!echoed || open.length < socks.length) {
    for (const s of socks) s.destroy();
    return {
      error: `held ${open.length} of ${socks.length} connections${echoed ? '' : ', and the last one held did not echo within 5 s'} (the others were closed by the proxy)`,
    };
  }
  await sleep(500);
  const m = memOf(c.echoPid ? { pids: [c.echoPid] } : c);
  for (const s of socks) s.destroy();
  await sleep(500);
  return m;
}

// ---- the run ----
const results = {};
const record = (scenario, name, value) => {
  results[scenario] ??= {};
  results[scenario][name] ??= [];
  results[scenario][name].push(value);
};

async function main() {
  log(`setting up the namespace backend ${BACKEND} (${NS})`);
  setupNamespace();
  // Short-connection runs leave a TIME_WAIT entry per connection towards one destination; past a
  // few thousand, connect()'s port search slows every contender down (direct included) by 10x.
  // Reusing TIME_WAIT ports for new outgoing connections (safe with timestamps) keeps runs
  // comparable; the setting is restored at the end.
  const twReuse = execFileSync('sysctl', ['-n', 'net.ipv4.tcp_tw_reuse']).toString().trim();
  sh('sysctl -qw net.ipv4.tcp_tw_reuse=1');
  cleanups.push(() => sh(`sysctl -qw net.ipv4.tcp_tw_reuse=${twReuse}`));
  await sleep(800);
  const running = {};
  for (const n of NAMES) {
    log(`starting ${n}`);
    running[n] = await CONTENDERS[n](Object.keys(CONTENDERS).indexOf(n));
    cleanups.push(() => running[n].stop());
  }
  await sleep(500);
  if (SCENARIOS.includes('memory')) for (const n of NAMES) if (running[n].pids.length) record('memory-idle', n, memOf(running[n]));
  // Warm up every path once (JIT, ARP, conntrack).
  for (const n of NAMES) await short({ ...running[n] }).catch(() => {});

  const load = [
    ['bulk1', (c) => bulk(c, 1)],
    ['bulk4', (c) => bulk(c, 4)],
    ['http', http],
    ['short', (c) => short(c, 1)],
    ['short20', (c) => short(c, 20)],
    ['udp64', (c, rep) => udp(c, 64, rep)],
    ['udp1400', (c, rep) => udp(c, 1400, rep)],
  ].filter(([s]) => SCENARIOS.includes(s));
  for (const [scenario, fn] of load) {
    for (let rep = 0; rep < REPS; rep++) {
      const order = rep % 2 ? [...NAMES].reverse() : NAMES;
      for (const n of order) {
        let v;
        try {
          v = await fn(running[n], rep);
        } catch (err) {
          // One failed run must not lose the others: it is reported, not measured.
          v = { error: String(err.message ?? err).split('\n')[0] };
        }
        if (v !== null) record(scenario, n, v);
        log(`${scenario} rep ${rep + 1}/${REPS} ${n}: ${JSON.stringify(v, (_k, x) => (typeof x === 'number' ? Number(x.toFixed(3)) : x))}`);
      }
    }
  }
  if (SCENARIOS.includes('memory')) {
    for (const n of NAMES) if (running[n].pids.length) record('memory-after-load', n, memOf(running[n]));
    for (const n of NAMES) {
      // socat forks a process per connection: thousands of processes, not comparable.
      if (!running[n].pids.length || running[n].tree) continue;
      log(`memory: ${IDLE_CONNS} idle connections through ${n}`);
      const m = await idleConnections(running[n]);
      if (m.error) log(`memory: ${n}: ${m.error}`);
      record('memory-idle-conns', n, m);
    }
  }
  await cleanup();
  if (SCENARIOS.includes('startup')) {
    // Shared mode: each start after the first finds the engine running (bench/ports.mjs measures
    // the first, engine start included, separately).
    const engineName = `upb-startup-${process.pid}`;
    cleanups.push(() => stopEngines(engineName));
    for (let i = 0; i < STARTUPS; i++) {
      const order = [
        ['docker-proxy', REF, 'js', 'true'],
        ['userland-proxy js', OURS, 'js', 'true'],
        ['userland-proxy native', OURS, 'native', 'true'],
        ['userland-proxy native per-port', OURS, 'native', 'false'],
      ];
      for (const [n, bin, engine, shared] of i % 2 ? order.reverse() : order) {
        if (!NAMES.includes(n)) continue;
        const { child, ms } = await spawnDockerMode(
          bin,
          ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(30990), '-container-ip', '127.0.0.1', '-container-port', '9'],
          { ...process.env, USERLAND_PROXY_ENGINE: engine, USERLAND_PROXY_SHARED: shared, USERLAND_PROXY_ENGINE_SOCKET: engineName },
        );
        record('startup', n, { ms });
        await stopChild(child);
      }
    }
    await stopEngines(engineName);
    log(`startup: ${STARTUPS} runs each`);
  }
  const report = {
    date: new Date().toISOString(),
    machine: machine(),
    quick: QUICK,
    reps: REPS,
    seconds: SECS,
    idleConns: IDLE_CONNS,
    shortConns: SHORT_CONNS,
    contenders: NAMES,
    results,
  };
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(OUT, 'latest.md'), renderMarkdown(report));
  writeFileSync(join(OUT, 'ratios.svg'), renderSvg(report));
  process.stdout.write(
    `\n${renderMarkdown(report)}\nwritten: ${join(OUT, 'latest.json')}, latest.md, ratios.svg (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`,
  );
}

main().catch(async (err) => {
  process.stderr.write(`bench: ${err.stack ?? err}\n`);
  await cleanup();
  process.exit(1);
});
