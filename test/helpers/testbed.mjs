// @ts-check
/**
 * The testbed that test/ and bench/ both stand on: network-namespace "containers" (a namespace
 * and a veth pair, as dockerd's bridge gives a container), private dockerds (their binaries, the
 * docker-proxy of each version, their own places, and what a dead one leaves behind), and the
 * shared engines of a run, found in /proc by their control socket's name, and the TIME_WAIT entries
 * toward a container's port. Plain JavaScript (typed by JSDoc, checked by test/tsconfig.json) so
 * that bench's .mjs scripts import it as it is.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The checkout. */
export const ROOT = resolve(import.meta.dirname, '../..');

/** Docker 28.5 as .ci/setup unpacks it from Debian unstable (dockerd, containerd, rootlesskit, docker-proxy). */
export const DOCKER_28 = join(ROOT, '.cache/docker-28.5');
const D28 = join(DOCKER_28, 'usr');

/** @typedef {{ dockerd: string, bin: string, args: string[], ref: string }} Dockerd */

/**
 * The Docker versions the suites and benches run: dockerd, the PATH prefix that gives it its own
 * containerd (28.5 runs Debian 12's runc; the 20.10 CLI talks to both), its extra daemon flags,
 * and its own docker-proxy (the reference). .ci/setup installs both. (Entries, not an object
 * literal: the formatter would turn the key '28.5' into the number 28.5.)
 */
export const DOCKERDS = /** @type {{ '20.10': Dockerd, '28.5': Dockerd }} */ (
  Object.fromEntries([
    ['20.10', { dockerd: '/usr/sbin/dockerd', bin: '', args: [], ref: process.env.REF_DOCKER_PROXY ?? join(ROOT, '.cache/ref/usr/sbin/docker-proxy') }],
    ['28.5', { dockerd: join(D28, 'sbin/dockerd'), bin: join(D28, 'bin'), args: ['--ip6tables=false'], ref: join(D28, 'sbin/docker-proxy') }],
  ])
);

/**
 * The bytes backend.mjs --serve sends for a request of n: a pattern the test can check.
 * @param {number} n
 */
export function pattern(n) {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) % 251;
  return b;
}

/** @param {string[]} args */
export function ip(...args) {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * TIME_WAIT entries on this host toward `address`:`port` (a container's port: bench/churn.mjs
 * leaves some 28 000 of them, hence the large buffer).
 * @param {string} address
 * @param {number} port
 */
export function timeWaitToward(address, port) {
  return execFileSync('ss', ['-Htan', 'state', 'time-wait', 'dst', `${address}:${port}`], { encoding: 'utf8', maxBuffer: 256 << 20 })
    .split('\n')
    .filter(Boolean).length;
}

/** @param {() => void} f */
function quietly(f) {
  try {
    f();
  } catch {
    // already gone, or never made
  }
}

/**
 * Creates namespace `name` joined to the host by veth `hostIf` (host end) / `nsIf`: the host end
 * gets `${v4}.1/24` (and `${v6}::1/64`), the namespace end `.2` / `::2`, routed through the host.
 * All or nothing: a failure removes what was made and throws one line naming the namespace.
 * @param {{ name: string, hostIf: string, nsIf: string, v4: string, v6?: string | null }} n
 */
export function createNamespace({ name, hostIf, nsIf, v4, v6 = null }) {
  try {
    ip('netns', 'add', name);
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', name);
    ip('addr', 'add', `${v4}.1/24`, 'dev', hostIf);
    if (v6) ip('-6', 'addr', 'add', `${v6}::1/64`, 'dev', hostIf, 'nodad');
    ip('link', 'set', hostIf, 'up');
    ip('-n', name, 'addr', 'add', `${v4}.2/24`, 'dev', nsIf);
    if (v6) ip('-n', name, '-6', 'addr', 'add', `${v6}::2/64`, 'dev', nsIf, 'nodad');
    ip('-n', name, 'link', 'set', nsIf, 'up');
    ip('-n', name, 'link', 'set', 'lo', 'up');
    ip('-n', name, 'route', 'add', 'default', 'via', `${v4}.1`);
  } catch (err) {
    deleteNamespace(name, hostIf);
    const e = /** @type {{ stderr?: Buffer }} */ (err);
    throw new Error(`cannot create namespace ${name}: ${e.stderr?.toString().trim() ?? err}`);
  }
}

/**
 * Removes a namespace (its veth pair goes with it) and the host end when given, quietly.
 * @param {string} name
 * @param {string} [hostIf]
 */
export function deleteNamespace(name, hostIf) {
  quietly(() => ip('netns', 'del', name));
  if (hostIf) quietly(() => ip('link', 'del', hostIf));
}

/**
 * A private daemon's own places under `dir`: data, exec root, socket, pid file; iptables off, vfs
 * storage (no overlayfs needed, nothing of the host's firewall touched).
 * @param {string} dir
 * @param {string} sock
 */
export function daemonArgs(dir, sock) {
  return [
    '--data-root',
    join(dir, 'data'),
    '--exec-root',
    join(dir, 'exec'),
    '-H',
    `unix://${sock}`,
    '--pidfile',
    join(dir, 'docker.pid'),
    '--iptables=false',
    '--storage-driver',
    'vfs',
  ];
}

/**
 * What a stopped private dockerd leaves: its containerd, the bind mounts under its roots (it
 * leaves netns and vfs mounts when it dies early), and its directory.
 * @param {string} dir
 */
export function removeDaemonLeftovers(dir) {
  quietly(() => execFileSync('pkill', ['-f', `containerd.*${dir}`]));
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) quietly(() => execFileSync('umount', ['-l', m], { stdio: 'ignore' }));
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Pids of the children of `parent` (zombies too).
 * @param {number} parent
 */
function childrenOf(parent) {
  const pids = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (Number(readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]?.split(' ')[1]) === parent) pids.push(Number(p));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/**
 * The proxies `parent` (a dockerd) runs, for host port `port` or for any: its children whose
 * arguments hold -host-port (a shim, a per-port Node process or a docker-proxy). Its children
 * only: another suite's proxy may serve the same port number on another address or in a
 * namespace of its own (counted by the port alone, CI once found two for one port).
 * @param {number} parent
 * @param {number} [port]
 * @returns {{ pid: number, uid: number, args: string }[]}
 */
export function proxiesOf(parent, port) {
  const flag = port === undefined ? '-host-port ' : `-host-port ${port} `;
  return childrenOf(parent).flatMap((pid) => {
    try {
      const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
      return args.includes(flag) ? [{ pid, uid, args }] : [];
    } catch {
      return []; // exited meanwhile
    }
  });
}

/**
 * Pids of shared engines (src/shared-engine/engine.ts) whose USERLAND_PROXY_ENGINE_SOCKET is
 * `name`, or starts with `name-` when `prefix`.
 * @param {string} name
 * @param {boolean} [prefix]
 */
export function enginePids(name, prefix = false) {
  const pids = [];
  const key = `USERLAND_PROXY_ENGINE_SOCKET=${name}`;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (!args.some((a) => a.endsWith('/dist/cli.js')) || !args.includes('engine')) continue;
      const env = readFileSync(`/proc/${d}/environ`, 'utf8').split('\0');
      if (env.some((e) => e === key || (prefix && e.startsWith(`${key}-`)))) pids.push(Number(d));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/**
 * Signals the engines named `name` (and `name-*` when `prefix`) and waits (at most 5 s) until
 * they are gone.
 * @param {string} name
 * @param {{ signal?: NodeJS.Signals, prefix?: boolean }} [o]
 */
export async function stopEngines(name, { signal = 'SIGTERM', prefix = false } = {}) {
  const pids = [...enginePids(name), ...(prefix ? enginePids(name, true) : [])];
  for (const pid of pids) quietly(() => process.kill(pid, signal));
  for (let i = 0; i < 100 && pids.some((p) => existsSync(`/proc/${p}`)); i++) await new Promise((r) => setTimeout(r, 50));
}
