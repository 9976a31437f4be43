/**
 * A private Docker engine for a test file (Debian 12's docker.io 20.10, installed by .ci/setup, or
 * Docker 28.5 from Debian unstable, unpacked by .ci/setup into .cache/docker-28.5): its own
 * data-root, exec-root, socket and pidfile under a temp dir, iptables off, vfs storage. Every
 * CLI call is bounded; stop() removes the daemon, its containerd, mounts and the directory.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { IS_ROOT } from './netns.js';
import { sleep } from './net.js';
import { ROOT } from './proxy.js';

const run = promisify(execFile);
const DOCKER = '/usr/bin/docker';
const D28 = join(ROOT, '.cache/docker-28.5');

/**
 * The dockerd versions the tests run: where each one's binaries are, and the PATH prefix that
 * gives it its own containerd (28.5 runs Debian 12's runc; the 20.10 CLI talks to both).
 */
export const DOCKERDS = {
  '20.10': { dockerd: '/usr/sbin/dockerd', bin: '', args: [] as string[] },
  '28.5': { dockerd: join(D28, 'usr/sbin/dockerd'), bin: join(D28, 'usr/bin'), args: ['--ip6tables=false'] },
} as const;
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

export interface PrivateDockerd {
  /** The temp dir holding everything of this daemon (free for the test's own files too). */
  dir: string;
  /** Runs the docker CLI against this daemon, bounded by `seconds` (default 30). */
  docker(args: string[], seconds?: number): Promise<{ stdout: string; stderr: string; code: number }>;
  /** What the daemon printed so far (for failure messages). */
  log(): string;
  /** Sends `signal` to dockerd itself (not its `timeout` wrapper) and waits until it exited. */
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
    child = spawn(
      'timeout',
      [
        '900',
        dockerd,
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
        ...args,
        ...extraArgs,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env },
    );
    child.stderr?.on('data', (d) => {
      daemonLog += d;
    });
    child.stdout?.on('data', (d) => {
      daemonLog += d;
    });
  };
  launch();
  const docker = async (args: string[], seconds = 30): Promise<{ stdout: string; stderr: string; code: number }> => {
    try {
      const { stdout, stderr } = await run('timeout', [String(seconds), DOCKER, '-H', `unix://${sock}`, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
      return { stdout, stderr, code: 0 };
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; code?: number };
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? '', code: e.code ?? 1 };
    }
  };
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) {
      const exited = new Promise((res) => child.once('exit', res));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(15_000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    try {
      execFileSync('pkill', ['-f', `containerd.*${dir}`]);
    } catch {
      /* none left */
    }
    // dockerd leaves bind mounts (netns, overlay/vfs) under its roots when it dies early.
    const mounts = readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1] ?? '')
      .filter((m) => m.startsWith(`${dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) {
      try {
        execFileSync('umount', ['-l', m], { stdio: 'ignore' });
      } catch {
        /* already gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const up = async (): Promise<boolean> => {
    for (let i = 0; i < 60; i++) {
      await sleep(500);
      if ((await docker(['info'])).code === 0) return true;
    }
    return false;
  };
  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    const exited = new Promise((res) => child.once('exit', res));
    // Its managed containerd dies with it (Pdeathsig; a SIGTERM'd dockerd also removes the pid
    // file): a restart before that finds it half alive.
    const containerd = Number(readFileSync(join(dir, 'exec/containerd/containerd.pid'), 'utf8').trim());
    process.kill(Number(readFileSync(join(dir, 'docker.pid'), 'utf8').trim()), signal);
    await Promise.race([exited, sleep(20_000)]);
    for (let i = 0; i < 100 && existsSync(`/proc/${containerd}`); i++) await sleep(100);
  };
  const restart = async (): Promise<void> => {
    launch();
    if (!(await up())) throw new Error(`dockerd did not come up again:\n${daemonLog.slice(-2000)}`);
  };
  if (await up()) return { dir, docker, log: () => daemonLog, kill, restart, stop };
  await stop();
  throw new Error(`dockerd did not come up:\n${daemonLog.slice(-2000)}`);
}
