/**
 * A private Docker engine for a test file (Debian's docker.io, installed by .ci/setup): its own
 * data-root, exec-root, socket and pidfile under a temp dir, iptables off, vfs storage. Every
 * CLI call is bounded; stop() removes the daemon, its containerd, mounts and the directory.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { IS_ROOT } from './netns.js';
import { sleep } from './net.js';

const run = promisify(execFile);
const DOCKERD = '/usr/sbin/dockerd';
const DOCKER = '/usr/bin/docker';
/** True when a private dockerd can run here (root and docker.io installed). */
export const CAN_RUN_DOCKERD = IS_ROOT && existsSync(DOCKERD) && existsSync(DOCKER);

export interface PrivateDockerd {
  /** The temp dir holding everything of this daemon (free for the test's own files too). */
  dir: string;
  /** Runs the docker CLI against this daemon, bounded by `seconds` (default 30). */
  docker(args: string[], seconds?: number): Promise<{ stdout: string; stderr: string; code: number }>;
  /** What the daemon printed so far (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

/** Starts a private dockerd with extra flags and environment; resolves once `docker info` works. */
export async function startDockerd(extraArgs: string[], env: Record<string, string>): Promise<PrivateDockerd> {
  const dir = mkdtempSync('/tmp/upt-dockerd-');
  const sock = join(dir, 'docker.sock');
  let daemonLog = '';
  const child: ChildProcess = spawn(
    'timeout',
    [
      '900',
      DOCKERD,
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
  for (let i = 0; i < 60; i++) {
    await sleep(500);
    if ((await docker(['info'])).code === 0) return { dir, docker, log: () => daemonLog, stop };
  }
  await stop();
  throw new Error(`dockerd did not come up:\n${daemonLog.slice(-2000)}`);
}
