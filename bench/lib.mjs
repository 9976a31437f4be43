// Shared helpers of the bench scripts: dockerd-like spawning with a status pipe on fd 3, memory
// and CPU readings from /proc, free ports, statistics.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DOCKERDS, ROOT } from '../test/helpers/testbed.mjs';

export { ROOT };
export const OURS = join(ROOT, 'bin/userland-proxy');
/** docker-proxy 20.10 (Debian 12's docker.io), the reference of the side-by-side benches. */
export const REF = DOCKERDS['20.10'].ref;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A port that was free a moment ago, from 20000-29999: below the kernel's ephemeral range, where
 * no outgoing connection takes it before the proxy binds it, and apart from the test suite's ports
 * (test/helpers/net.ts) and run.mjs's fixed ones (31000 up).
 */
export async function freePort(host = '127.0.0.1') {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    const free = await new Promise((res) => {
      const s = createServer();
      s.once('error', () => res(false)).listen(port, host, () => s.close(() => res(true)));
    });
    if (free) return port;
  }
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Rss and Private_Dirty (MiB) of a process. */
export function mem(pid) {
  const t = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const f = (n) => Number(new RegExp(`^${n}:\\s+(\\d+) kB`, 'm').exec(t)[1]) / 1024;
  return { rssMiB: f('Rss'), privateDirtyMiB: f('Private_Dirty') };
}

/** utime+stime of a process, its threads and its reaped children (socat's forks), in seconds. */
export function cpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return 0;
  }
}

/**
 * Spawns a docker-mode proxy as dockerd does (a FIFO on fd 3) and resolves { child, ms } when
 * it wrote "0\n"; rejects with what it wrote otherwise.
 */
export function spawnDockerMode(bin, argv, env = process.env) {
  const dir = mkdtempSync(join(tmpdir(), 'upb-'));
  const fifo = join(dir, 'st');
  execFileSync('mkfifo', [fifo]);
  const rfd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const wfd = openSync(fifo, constants.O_WRONLY);
  rmSync(dir, { recursive: true });
  const t0 = process.hrtime.bigint();
  const child = spawn(bin, argv, { stdio: ['ignore', 'ignore', 'ignore', wfd], env });
  closeSync(wfd);
  return new Promise((res, rej) => {
    const s = new Socket({ fd: rfd, readable: true, writable: false });
    let got = '';
    s.on('data', (d) => {
      got += d;
      if (got === '0\n') res({ child, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
    });
    s.on('end', () => {
      s.destroy();
      if (got !== '0\n') rej(new Error(`${bin}: ${JSON.stringify(got)}`));
    });
  });
}

/** SIGINT and wait for the exit. */
export const stopChild = (child) =>
  new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res();
    child.once('exit', res);
    child.kill('SIGINT');
  });

/**
 * The machine and the environment a run measured with: startup figures depend on it (Node 20 pays
 * about 50 ms per start for NODE_EXTRA_CA_CERTS; the launcher drops it, a bare `node` does not).
 */
export function machine() {
  const env = ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS', 'USERLAND_PROXY_NODE_OPTIONS'].filter((k) => process.env[k]).map((k) => `${k} set`);
  return (
    `${execFileSync('nproc').toString().trim()} vCPU, node ${process.version}, kernel ${execFileSync('uname', ['-r']).toString().trim()}` +
    `, environment: ${env.length ? env.join(', ') : 'no NODE_EXTRA_CA_CERTS/NODE_OPTIONS'} (the launcher unsets NODE_EXTRA_CA_CERTS)`
  );
}

export { enginePids, stopEngines } from '../test/helpers/testbed.mjs';

/** Pss of a process in MiB (/proc/PID/smaps_rollup): its fair share of shared pages. */
export function pssMiB(pid) {
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return Number(m?.[1] ?? Number.NaN) / 1024;
}
