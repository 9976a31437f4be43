#!/usr/bin/env node
// Per-port cost in docker mode (issue 13), every contender side by side in one run:
//   sequence  --count proxies started one after another, each waited for on its fd-3 pipe (dockerd's
//             loop), then stopped one after another (SIGINT, wait for the exit): wall times, total
//             Pss of every process of the contender (ours: the shims and the engine), the part of
//             it that each proxy adds beyond the engine
//   single    spawn -> "0\n" of one proxy while the engine runs (median of --runs), and of a first
//             proxy that has to start the engine (median of --firsts cold starts)
//   dockerd   a real dockerd publishing port ranges (`docker run -d -p N-M:N-M`: two proxies per
//             port, IPv4 and IPv6) and `docker stop`, per contender: times, the proxies' processes
//             and their Pss (ours: with the engine). Under dockerd 28.5 (Debian unstable's, which
//             binds each port itself and passes it on fd 4; .ci/setup unpacks it) and 20.10
//             (Debian 12's), each with the docker-proxy of its own version as the reference
// Contenders: the reference docker-proxy, userland-proxy shared (the default: shims + one engine)
// and userland-proxy per-port (USERLAND_PROXY_SHARED=false: a Node process per port). The per-port
// contender skips ranges above --per-port-max ports (a Node process per port: 2000 of them would
// need ~16 GiB and ~5 minutes).
// Usage: node bench/ports.mjs [--count 200] [--runs 20] [--firsts 5] [--ranges 100,1000]
//        [--per-port-max 100] [--no-dockerd] [--dockerds 28.5,20.10] [--reps 3]
//        (root; .ci/setup installs them). dockerd rows: medians of --reps run/stop cycles.
// Writes bench/results/ports.json and ports.md and prints the table.
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { daemonArgs, proxiesOf, DOCKERDS as TESTBED_DOCKERDS, removeDaemonLeftovers } from '../test/helpers/testbed.mjs';
import { enginePids, machine as machineText, median, pssMiB, REF, ROOT, sleep, stopEngines } from './lib.mjs';

const args = process.argv.slice(2);
const opt = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const COUNT = Number(opt('--count', '200'));
const RUNS = Number(opt('--runs', '20'));
const FIRSTS = Number(opt('--firsts', '5'));
const RANGES = opt('--ranges', '100,1000').split(',').map(Number);
const PER_PORT_MAX = Number(opt('--per-port-max', '100'));
const REPS = Number(opt('--reps', '3'));
/** The dockerd versions, each with its own docker-proxy (the reference in its rows). */
const DOCKERDS = [
  { version: '28.5', ...TESTBED_DOCKERDS['28.5'] },
  { version: '20.10', ...TESTBED_DOCKERDS['20.10'] },
].filter((d) => opt('--dockerds', '28.5,20.10').split(',').includes(d.version) && existsSync(d.dockerd) && existsSync(d.ref));
const DOCKERD = !args.includes('--no-dockerd') && DOCKERDS.length > 0 && existsSync('/bin/busybox');
const log = (m) => process.stdout.write(`${m}\n`);

// Ours as an operator installs it for dockerd (deploy/docker/install.sh): bin/userland-proxy is
// then the shim itself, with no shell in front of it.
const PREFIX = mkdtempSync('/tmp/upb-install-');
execFileSync('sh', [join(ROOT, 'deploy/docker/install.sh'), join(PREFIX, 'opt')], { stdio: 'ignore' });
const INSTALLED = join(PREFIX, 'opt/bin/userland-proxy');
const CONTENDERS = [
  { name: 'docker-proxy', bin: REF, env: {} },
  { name: 'userland-proxy shared', bin: INSTALLED, env: { USERLAND_PROXY_SHARED: 'true' } },
  { name: 'userland-proxy per-port', bin: INSTALLED, env: { USERLAND_PROXY_SHARED: 'false' } },
];
for (const c of CONTENDERS) if (!existsSync(c.bin)) throw new Error(`${c.name} not found at ${c.bin} (run .ci/setup)`);
const cleanups = [() => rmSync(PREFIX, { recursive: true, force: true })];
let engineSeq = 0;
const engineName = () => `upb-ports-${process.pid}-${engineSeq++}`;

/** Ports free right now, from `from` up. */
async function freePorts(n, from) {
  const out = [];
  for (let p = from; out.length < n && p < 65000; p++) {
    const ok = await new Promise((res) => {
      const s = createServer();
      s.once('error', () => res(false));
      s.listen(p, '127.0.0.1', () => s.close(() => res(true)));
    });
    if (ok) out.push(p);
  }
  return out;
}
/** The first port of `n` contiguous free ports, from `from` up. */
async function freeRange(n, from) {
  for (let base = from; base + n < 65000; ) {
    const got = await freePorts(n, base);
    if (got[n - 1] === base + n - 1) return base;
    base = got.find((p, i) => p !== base + i) ?? base + n;
  }
  throw new Error(`no ${n} contiguous free ports`);
}
const argv = (port) => ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(port), '-container-ip', '127.0.0.1', '-container-port', '9'];

// dockerd forks cheaply (Go's os/exec uses vfork); a Node parent's fork costs ~1.7 ms per spawn,
// so the proxies are started by a small C helper that does what dockerd does (posix_spawn, a pipe
// on fd 3, a read of the status bytes) and reports its own timings.
const SEQ_DIR = mkdtempSync('/tmp/upb-seq-');
cleanups.push(() => rmSync(SEQ_DIR, { recursive: true, force: true }));
const SPAWN_SEQ = join(SEQ_DIR, 'spawn-seq');
execFileSync('gcc', ['-O2', '-Wall', '-o', SPAWN_SEQ, join(ROOT, 'bench/spawn-seq.c')]);

/** Starts `count` proxies on port0.. one after another; resolves the starts and a stop(). */
function spawnSeq(bin, count, port0, env) {
  // docker-proxy logs each stop on stderr: not part of the table.
  const child = spawn(SPAWN_SEQ, [String(count), String(port0), bin, ...argv('{port}')], { env, stdio: ['pipe', 'pipe', 'ignore'] });
  const starts = [];
  let buf = '';
  let onStarted;
  let onStopped;
  const started = new Promise((res) => {
    onStarted = res;
  });
  const stopped = new Promise((res) => {
    onStopped = res;
  });
  child.stdout.on('data', (d) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const o = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if ('i' in o) starts.push(o);
      else if ('started_us' in o) onStarted(o.started_us / 1000);
      else if ('stopped_us' in o) onStopped(o.stopped_us / 1000);
    }
  });
  child.once('exit', () => {
    onStarted(Number.NaN);
    onStopped(Number.NaN);
  });
  cleanups.push(() => child.kill('SIGKILL'));
  return started.then((startMs) => {
    const bad = starts.find((x) => x.status !== '0\n');
    if (bad || Number.isNaN(startMs)) throw new Error(`${bin}: start ${bad?.i ?? starts.length} failed`);
    return {
      startMs,
      starts,
      stop: () => {
        child.stdin.end('stop\n');
        return stopped;
      },
    };
  });
}

/** The sequence: start N one after another, measure, stop them one after another. */
async function sequence(c, port0) {
  const name = engineName();
  const env = { ...process.env, ...c.env, USERLAND_PROXY_ENGINE_SOCKET: name };
  cleanups.push(() => stopEngines(name));
  // The engine's Pss with one mapping, to tell its growth per mapping from its floor.
  const one = await spawnSeq(c.bin, 1, port0 + COUNT, env);
  await sleep(500);
  const [engine1] = enginePids(name);
  const engineFirstPss = engine1 === undefined ? null : pssMiB(engine1);
  await one.stop();
  await stopEngines(name);
  const run = await spawnSeq(c.bin, COUNT, port0, env);
  await sleep(1000);
  const engines = enginePids(name);
  const procPss = run.starts.map((x) => pssMiB(x.pid));
  const enginePss = engines.reduce((a, p) => a + pssMiB(p), 0);
  const stopMs = await run.stop();
  await stopEngines(name);
  return {
    startMs: run.startMs,
    firstMs: run.starts[0].us / 1000,
    stopMs,
    totalPssMiB: procPss.reduce((a, b) => a + b, 0) + enginePss,
    processes: run.starts.length + engines.length,
    enginePssMiB: engines.length ? enginePss : null,
    // What one more proxy adds: its own process, plus (shared) the engine's growth per mapping.
    perProxyPssMiB: engines.length ? median(procPss) + (enginePss - (engineFirstPss ?? enginePss)) / Math.max(1, COUNT - 1) : median(procPss),
    shimPssMiB: engines.length ? median(procPss) : null,
  };
}

/** One proxy at a time: with the engine running (warm), and as the first one (engine start). */
async function single(c, port) {
  const warm = [];
  const first = [];
  const name = engineName();
  cleanups.push(() => stopEngines(name));
  const env = { ...process.env, ...c.env, USERLAND_PROXY_ENGINE_SOCKET: name };
  // Keep one mapping so that the engine stays up between the measured starts.
  const keep = c.env.USERLAND_PROXY_SHARED === 'true' ? await spawnSeq(c.bin, 1, port + 1, env) : null;
  for (let i = 0; i < RUNS; i++) {
    const r = await spawnSeq(c.bin, 1, port, env);
    warm.push(r.starts[0].us / 1000);
    await r.stop();
  }
  await keep?.stop();
  await stopEngines(name);
  if (c.env.USERLAND_PROXY_SHARED === 'true') {
    for (let i = 0; i < FIRSTS; i++) {
      const cold = engineName();
      const r = await spawnSeq(c.bin, 1, port, { ...env, USERLAND_PROXY_ENGINE_SOCKET: cold });
      first.push(r.starts[0].us / 1000);
      await r.stop();
      await stopEngines(cold);
    }
  }
  return { warmMs: median(warm), warmMinMs: Math.min(...warm), firstMs: first.length ? median(first) : null };
}

// ---- a real dockerd ----
async function withDockerd(c, v, fn) {
  const dir = mkdtempSync('/tmp/upb-dockerd-');
  const sock = join(dir, 'docker.sock');
  const name = engineName();
  const env = { PATH: `${v.bin ? `${v.bin}:` : ''}/usr/sbin:/usr/bin:/sbin:/bin`, ...c.env, USERLAND_PROXY_ENGINE_SOCKET: name };
  const d = spawn(
    'timeout',
    ['1800', v.dockerd, ...v.args, ...daemonArgs(dir, sock), '--bip', '10.247.77.1/24', '--userland-proxy-path', c.name === 'docker-proxy' ? v.ref : c.bin],
    { stdio: 'ignore', env },
  );
  const docker = (...a) => {
    const t0 = process.hrtime.bigint();
    execFileSync('timeout', ['600', '/usr/bin/docker', '-H', `unix://${sock}`, ...a], { stdio: 'ignore' });
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const stop = async () => {
    const exited = new Promise((res) => d.once('exit', res));
    d.kill('SIGTERM');
    await Promise.race([exited, sleep(30_000)]);
    removeDaemonLeftovers(dir);
    try {
      execFileSync('ip', ['link', 'del', 'docker0'], { stdio: 'ignore' });
    } catch {
      // gone
    }
    await stopEngines(name);
  };
  cleanups.push(stop);
  try {
    let up = false;
    for (let i = 0; i < 60 && !up; i++) {
      await sleep(500);
      try {
        docker('info');
        up = true;
      } catch {
        // not yet
      }
    }
    if (!up) throw new Error('dockerd did not come up');
    docker('import', join(IMAGE_DIR, 'rootfs.tar'), 'upb-busybox');
    // The proxies are dockerd's children; ours add the engine of this dockerd's name.
    const dockerdPid = Number(readFileSync(join(dir, 'docker.pid'), 'utf8').trim());
    const proxies = () => {
      const pids = proxiesOf(dockerdPid).map((p) => p.pid);
      const engines = enginePids(name);
      return { processes: pids.length + engines.length, pssMiB: [...pids, ...engines].reduce((a, p) => a + pssMiB(p), 0) };
    };
    return await fn(docker, proxies);
  } finally {
    cleanups.splice(cleanups.indexOf(stop), 1);
    await stop();
  }
}

const IMAGE_DIR = mkdtempSync('/tmp/upb-image-');
cleanups.push(() => rmSync(IMAGE_DIR, { recursive: true, force: true }));
if (DOCKERD) {
  const rootfs = join(IMAGE_DIR, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'httpd']) symlinkSync('busybox', join(rootfs, 'bin', a));
  execFileSync('tar', ['-C', rootfs, '-cf', join(IMAGE_DIR, 'rootfs.tar'), '.']);
}

async function main() {
  const results = { sequence: {}, single: {}, dockerd: {} };
  const singlePort = await freeRange(2, 30800);
  let base = 41000;
  for (const c of CONTENDERS) {
    const port0 = await freeRange(COUNT + 1, base);
    base = port0 + COUNT + 1;
    log(`sequence: ${COUNT} proxies of ${c.name}`);
    results.sequence[c.name] = await sequence(c, port0);
    log(`single: ${c.name}`);
    results.single[c.name] = await single(c, singlePort);
  }
  if (DOCKERD) {
    for (const v of DOCKERDS)
      for (const n of RANGES) {
        // A contiguous range is what `-p N-M:N-M` publishes.
        const first = await freeRange(n, 45000);
        for (const c of CONTENDERS) {
          if (c.env.USERLAND_PROXY_SHARED === 'false' && n > PER_PORT_MAX) continue;
          log(`dockerd ${v.version}: ${n} ports (${2 * n} proxies) with ${c.name}`);
          results.dockerd[`${v.version} ${n}`] ??= {};
          results.dockerd[`${v.version} ${n}`][c.name] = await withDockerd(c, v, async (docker, proxies) => {
            const range = `${first}-${first + n - 1}`;
            const reps = [];
            for (let i = 0; i < REPS; i++) {
              const runMs = docker('run', '-d', '--name', 'upb-range', '-p', `${range}:${range}`, 'upb-busybox', 'httpd', '-f', '-p', '80');
              await sleep(1000);
              const { processes, pssMiB } = proxies();
              const stopMs = docker('stop', '-t', '1', 'upb-range');
              docker('rm', 'upb-range');
              reps.push({ runMs, stopMs, processes, pssMiB });
            }
            const med = (k) => median(reps.map((r) => r[k]));
            return { runMs: med('runMs'), stopMs: med('stopMs'), processes: med('processes'), pssMiB: med('pssMiB'), reps };
          });
        }
      }
  }
  return results;
}

function render(results) {
  const ratio = (v, r) => (r ? ` (${(v / r).toFixed(2)}x)` : '');
  const rows = [];
  rows.push(`| measure | ${CONTENDERS.map((c) => c.name).join(' | ')} |`, `|---|${CONTENDERS.map(() => '---|').join('')}`);
  const row = (label, get, digits = 1) =>
    rows.push(
      `| ${label} | ${CONTENDERS.map((c) => {
        const v = get(c.name);
        const r = get('docker-proxy');
        return v === null || v === undefined ? 'n/a' : `${v.toFixed(digits)}${c.name === 'docker-proxy' ? '' : ratio(v, r)}`;
      }).join(' | ')} |`,
    );
  row(`${COUNT} proxies started one by one, each waited for: total ms`, (n) => results.sequence[n]?.startMs, 0);
  row('...of which the first, ms', (n) => results.sequence[n]?.firstMs, 1);
  row(`${COUNT} proxies stopped one by one (SIGINT, wait): total ms`, (n) => results.sequence[n]?.stopMs, 0);
  row(`total Pss of every process, MiB`, (n) => results.sequence[n]?.totalPssMiB);
  row('each proxy beyond the engine, Pss MiB (shim + engine growth per mapping)', (n) => results.sequence[n]?.perProxyPssMiB, 3);
  row('the engine alone, Pss MiB', (n) => results.sequence[n]?.enginePssMiB);
  row(`one proxy, spawn to "0\\n", ms (median of ${RUNS}, engine running)`, (n) => results.single[n]?.warmMs, 2);
  row(
    `first proxy (starts the engine), spawn to "0\\n", ms (median of ${FIRSTS})`,
    (n) => results.single[n]?.firstMs ?? (n === 'docker-proxy' ? results.single[n]?.warmMs : null),
    1,
  );
  for (const [key, by] of Object.entries(results.dockerd)) {
    const [version, n] = key.split(' ');
    const d = `dockerd ${version} (docker-proxy ${version}), median of ${REPS}`;
    row(`${d}: docker run -d -p with ${n} ports (${2 * n} proxies), ms`, (c) => by[c]?.runMs, 0);
    row(`${d}: docker stop with ${n} ports, ms`, (c) => by[c]?.stopMs, 0);
    row(`${d}: ${n} ports, processes serving them`, (c) => by[c]?.processes, 0);
    row(`${d}: ${n} ports, Pss of those processes, MiB`, (c) => by[c]?.pssMiB, 1);
  }
  return rows.join('\n');
}

const machine = machineText();
process.on(
  'SIGINT',
  () =>
    void Promise.all(
      cleanups
        .splice(0)
        .reverse()
        .map((f) => f()),
    ).then(() => process.exit(130)),
);
try {
  const results = await main();
  const table = [`Measured ${new Date().toISOString().slice(0, 10)} on ${machine}. Ratios are to docker-proxy in the same run.`, '', render(results)].join(
    '\n',
  );
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(
    join(ROOT, 'bench/results/ports.json'),
    `${JSON.stringify({ date: new Date().toISOString(), machine, count: COUNT, runs: RUNS, results }, null, 2)}\n`,
  );
  writeFileSync(join(ROOT, 'bench/results/ports.md'), `${table}\n`);
  log(`\n${table}`);
} finally {
  for (const f of cleanups.splice(0).reverse()) await f();
}
