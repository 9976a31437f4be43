/**
 * A private Docker engine for a test file (Debian 12's docker.io 20.10, installed by .ci/setup, or
 * Docker 28.5 from Debian unstable, unpacked by .ci/setup into .cache/docker-28.5): its own
 * data-root, exec-root, socket and pidfile under a temp dir, iptables off, vfs storage. Every
 * CLI call is bounded; stop() removes the daemon, its containerd, mounts and the directory.
 */
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { IS_ROOT } from './netns.js';
import { sleep } from './net.js';
import { DOCKER_28, DOCKERDS, daemonArgs, removeDaemonLeftovers, ROOT } from './testbed.mjs';

const run = promisify(execFile);
const DOCKER = '/usr/bin/docker';
export { DOCKERDS };
export type DockerdVersion = keyof typeof DOCKERDS;

/** Why a private dockerd of this version cannot run here, or null when it can. */
export function dockerdMissing(version: DockerdVersion): string | null {
  if (!IS_ROOT) return 'needs root';
  if (!existsSync(DOCKER)) return 'needs docker.io (.ci/setup)';
  if (!existsSync(DOCKERDS[version].dockerd)) return `needs Docker ${version} (.ci/setup unpacks it from Debian unstable)`;
  return null;
}
/** True when a private dockerd 20.10 can run here (root and docker.io installed). */
export const CAN_RUN_DOCKERD = dockerdMissing('20.10') === null;

/** The image the dockerd suites run: busybox (sh, httpd, sleep), a static UDP echo server and an
 * index page (plus `files` under /www), as a rootfs tar in `dir` (rootfs.tar, readable by all). */
export function buildTestImage(dir: string, files: Record<string, string | Buffer> = {}): string {
  const rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  mkdirSync(join(rootfs, 'www'));
  copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'httpd', 'sleep']) symlinkSync('busybox', join(rootfs, 'bin', a));
  execFileSync('gcc', ['-static', '-O2', '-o', join(rootfs, 'bin/udpecho'), join(ROOT, 'test/helpers/udp-echo.c')]);
  writeFileSync(join(rootfs, 'www/index.html'), 'hello from the container\n');
  for (const [name, body] of Object.entries(files)) writeFileSync(join(rootfs, 'www', name), body);
  const tar = join(dir, 'rootfs.tar');
  execFileSync('tar', ['-C', rootfs, '-cf', tar, '.']);
  chmodSync(tar, 0o644);
  return tar;
}

/** The docker CLI against the daemon at `sock`, bounded by `seconds`. */
function dockerCli(sock: string): PrivateDockerd['docker'] {
  return async (args, seconds = 30) => {
    try {
      const { stdout, stderr } = await run('timeout', [String(seconds), DOCKER, '-H', `unix://${sock}`, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
      return { stdout, stderr, code: 0 };
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; code?: number };
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? '', code: e.code ?? 1 };
    }
  };
}

export interface PrivateDockerd {
  /** The temp dir holding everything of this daemon (free for the test's own files too). */
  dir: string;
  /** Runs the docker CLI against this daemon, bounded by `seconds` (default 30). */
  docker(args: string[], seconds?: number): Promise<{ stdout: string; stderr: string; code: number }>;
  /** What the daemon printed so far (for failure messages). */
  log(): string;
  /** The pid of dockerd itself (not of its `timeout` wrapper), from its pid file. */
  pid(): number;
  /** Sends `signal` to dockerd itself and waits until it exited. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Starts dockerd again on the same directories (with --live-restore it keeps its containers). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a private dockerd with extra flags and environment; resolves once `docker info` works. */
export async function startDockerd(extraArgs: string[], env: Record<string, string>, version: DockerdVersion = '20.10'): Promise<PrivateDockerd> {
  const { dockerd, bin, args } = DOCKERDS[version];
  if (bin) env = { ...env, PATH: `${bin}:${env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
  const dir = mkdtempSync('/tmp/upt-dockerd-');
  const sock = join(dir, 'docker.sock');
  let daemonLog = '';
  let child: ChildProcess;
  const launch = (): void => {
    child = spawn('timeout', ['900', dockerd, ...daemonArgs(dir, sock), ...args, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'], env });
    child.stderr?.on('data', (d) => {
      daemonLog += d;
    });
    child.stdout?.on('data', (d) => {
      daemonLog += d;
    });
  };
  launch();
  const docker = dockerCli(sock);
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) {
      const exited = new Promise((res) => child.once('exit', res));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(15_000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    removeDaemonLeftovers(dir);
  };
  const up = async (): Promise<boolean> => {
    for (let i = 0; i < 60; i++) {
      await sleep(500);
      if ((await docker(['info'])).code === 0) return true;
    }
    return false;
  };
  const pid = (): number => Number(readFileSync(join(dir, 'docker.pid'), 'utf8').trim());
  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    const exited = new Promise((res) => child.once('exit', res));
    // Its managed containerd dies with it (Pdeathsig; a SIGTERM'd dockerd also removes the pid
    // file): a restart before that finds it half alive.
    const containerd = Number(readFileSync(join(dir, 'exec/containerd/containerd.pid'), 'utf8').trim());
    process.kill(pid(), signal);
    await Promise.race([exited, sleep(20_000)]);
    for (let i = 0; i < 100 && existsSync(`/proc/${containerd}`); i++) await sleep(100);
  };
  const restart = async (): Promise<void> => {
    launch();
    if (!(await up())) throw new Error(`dockerd did not come up again:\n${daemonLog.slice(-2000)}`);
  };
  if (await up()) return { dir, docker, log: () => daemonLog, pid, kill, restart, stop };
  await stop();
  throw new Error(`dockerd did not come up:\n${daemonLog.slice(-2000)}`);
}

/** Why rootless Docker 28.5 cannot run here, or null when it can. */
export function rootlessMissing(): string | null {
  const base = dockerdMissing('28.5');
  if (base) return base;
  for (const tool of ['/usr/bin/newuidmap', '/usr/bin/slirp4netns', '/usr/bin/setfacl', '/usr/sbin/useradd'])
    if (!existsSync(tool)) return `needs ${tool} (.ci/setup installs uidmap, slirp4netns and acl)`;
  if (!existsSync(join(DOCKER_28, 'usr/share/docker.io/contrib/dockerd-rootless.sh'))) return 'needs dockerd-rootless.sh (.ci/setup)';
  return null;
}

/** A user of a test's own for rootless Docker, with what it needs; remove() undoes all of it. */
export interface RootlessUser {
  name: string;
  uid: number;
  gid: number;
  remove(): void;
}

/**
 * Creates a user with subordinate ids (useradd gives them) and lets it, alone, open /dev/net/tun
 * (slirp4netns makes RootlessKit's tap device with it; the node is root's 0600): an ACL entry
 * for that user, removed with it.
 */
export function createRootlessUser(name: string): RootlessUser {
  spawnSync('userdel', ['-r', name], { stdio: 'ignore' }); // left by a killed run, if any
  execFileSync('useradd', ['-m', '-s', '/bin/sh', name]);
  const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
  const acl = execFileSync('getfacl', ['-p', '/dev/net/tun'], { encoding: 'utf8' }); // restored exactly
  execFileSync('setfacl', ['-m', `u:${name}:rw`, '/dev/net/tun']);
  return {
    name,
    uid,
    gid,
    remove: () => {
      spawnSync('setfacl', ['--restore=-'], { input: acl, stdio: ['pipe', 'ignore', 'ignore'] });
      spawnSync('pkill', ['-KILL', '-u', name], { stdio: 'ignore' });
      spawnSync('userdel', ['-r', name], { stdio: 'ignore' });
    },
  };
}

/** A rootless dockerd: as PrivateDockerd, and the pid of dockerd (inside RootlessKit's namespaces). */
export type RootlessDockerd = Pick<PrivateDockerd, 'dir' | 'docker' | 'log' | 'stop'> & { pid(): number };

/**
 * Rootless Docker 28.5 as dockerd-rootless.sh starts it: RootlessKit (slirp4netns, the builtin
 * port driver) runs dockerd in a user and network namespace of its own, as `user`. Its binaries
 * are copied into the daemon's directory first (the checkout's path need not be open to others).
 * iptables off, vfs storage. stop() ends RootlessKit and everything of the user's.
 */
export async function startRootlessDockerd(user: RootlessUser, extraArgs: string[], env: Record<string, string>): Promise<RootlessDockerd> {
  const dir = mkdtempSync('/tmp/upt-rootless-');
  const bin = join(dir, 'bin');
  try {
    mkdirSync(bin);
    for (const f of [
      'usr/sbin/dockerd',
      'usr/bin/containerd',
      'usr/bin/containerd-shim-runc-v2',
      'usr/bin/rootlesskit',
      'usr/share/docker.io/contrib/dockerd-rootless.sh',
    ])
      copyFileSync(join(DOCKER_28, f), join(bin, f.slice(f.lastIndexOf('/') + 1)));
    for (const d of ['run', 'home']) mkdirSync(join(dir, d), { mode: 0o700 });
    execFileSync('chmod', ['-R', 'a+rx', bin]);
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, dir]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const sock = join(dir, 'docker.sock');
  let daemonLog = '';
  const child = spawn(
    'setpriv',
    [
      `--reuid=${user.uid}`,
      `--regid=${user.gid}`,
      '--init-groups',
      'timeout',
      '900',
      'sh',
      join(bin, 'dockerd-rootless.sh'),
      ...daemonArgs(dir, sock),
      '--ip6tables=false',
      ...extraArgs,
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: join(dir, 'home'),
      env: { ...env, HOME: join(dir, 'home'), XDG_RUNTIME_DIR: join(dir, 'run'), PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin` },
    },
  );
  child.stderr?.on('data', (d) => {
    daemonLog += d;
  });
  child.stdout?.on('data', (d) => {
    daemonLog += d;
  });
  const docker = dockerCli(sock);
  const pid = (): number => Number(readFileSync(join(dir, 'docker.pid'), 'utf8').trim());
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) {
      const exited = new Promise((res) => child.once('exit', res));
      // RootlessKit's parent (setpriv execs timeout, which runs it): its child ends with it.
      spawnSync('pkill', ['-TERM', '-u', String(user.uid), '-x', 'rootlesskit'], { stdio: 'ignore' });
      await Promise.race([exited, sleep(15_000)]);
    }
    spawnSync('pkill', ['-KILL', '-u', String(user.uid)], { stdio: 'ignore' });
    for (let i = 0; i < 50 && spawnSync('pgrep', ['-u', String(user.uid)]).status === 0; i++) await sleep(100);
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 60; i++) {
    await sleep(500);
    if ((await docker(['info'])).code === 0) return { dir, docker, log: () => daemonLog, pid, stop };
    if (child.exitCode !== null) break;
  }
  await stop();
  throw new Error(`rootless dockerd did not come up:\n${daemonLog.slice(-2000)}`);
}
