/**
 * Plays dockerd: spawns a proxy (ours through bin/userland-proxy, or the reference docker-proxy)
 * with a real pipe on fd 3 (a FIFO, as dockerd's os.Pipe) and optionally a socket on fd 4, reads
 * the status bytes, and stops it with SIGINT. Every process is tracked and killed in cleanup.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { exitOf, track } from './processes.js';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DOCKERDS, ROOT } from './testbed.mjs';

export { ROOT };
export const BIN = join(ROOT, 'bin/userland-proxy');
/** The reference docker-proxy of each Docker version the tests compare with (.ci/setup fetches both). */
export const REF_PROXIES = { '20.10': DOCKERDS['20.10'].ref, '28.5': DOCKERDS['28.5'].ref } as const;
export const REF_PROXY = REF_PROXIES['20.10'];
/**
 * True in test/run-majors.mjs's runs on Node 22, 24 and 26: cases that do not depend on the Node
 * line (the reference docker-proxy's own runs) are made in the main run only.
 */
export const MAJOR_RERUN = process.env.UPT_MAJOR_RERUN !== undefined;
/** dockerd's readiness limit. */
export const READY_TIMEOUT_MS = 16_000;

export interface ProxyProc {
  child: ChildProcess;
  pid: number;
  /** Every byte written to fd 3 until it was closed (or the process exited). */
  status: Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
  stdout(): string;
  /** SIGINT and wait; resolves the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface SpawnOptions {
  bin?: string;
  env?: Record<string, string>;
  /** A file descriptor to pass as fd 4. */
  listenFd?: number;
  /** 'pipe' (default): a FIFO on fd 3; 'none': fd 3 closed. */
  statusFd?: 'pipe' | 'none';
  uid?: number;
  gid?: number;
  /** Use exactly `env` as the environment instead of adding it to ours. */
  cleanEnv?: boolean;
  /** Not killed by killTracked (a run that outlives the test that starts it): the caller stops it. */
  keep?: boolean;
}

/** docker-proxy's argv as dockerd writes it (without -use-listen-fd). */
export function dockerArgv(proto: string, hostIp: string, hostPort: number | string, target: string, targetPort: number | string): string[] {
  return ['-proto', proto, '-host-ip', hostIp, '-host-port', String(hostPort), '-container-ip', target, '-container-port', String(targetPort)];
}

/** Spawns a proxy the way dockerd does. */
export function spawnProxy(args: readonly string[], opts: SpawnOptions = {}): ProxyProc {
  const dir = mkdtempSync(join(tmpdir(), 'upt-fifo-'));
  const fifo = join(dir, 'status');
  let readFd = -1;
  let writeFd = -1;
  if ((opts.statusFd ?? 'pipe') === 'pipe') {
    execFileSync('mkfifo', ['-m', '0666', fifo]);
    readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    writeFd = openSync(fifo, constants.O_WRONLY);
  }
  // Both ends are open: the pipe lives on without its name.
  rmSync(dir, { recursive: true, force: true });
  const stdio: (string | number)[] = ['ignore', 'pipe', 'pipe', writeFd >= 0 ? writeFd : 'ignore'];
  if (opts.listenFd !== undefined) stdio.push(opts.listenFd);
  const child = spawn(opts.bin ?? BIN, args, {
    stdio: stdio as never,
    env: opts.cleanEnv ? opts.env : { ...process.env, ...opts.env },
    cwd: '/', // as under dockerd; proves the launcher does not depend on the working directory
    uid: opts.uid,
    gid: opts.gid,
  });
  if (writeFd >= 0) closeSync(writeFd);
  let err = '';
  let out = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  child.stdout?.on('data', (d) => {
    out += d;
  });
  const exited = opts.keep ? exitOf(child) : track(child);
  const status = new Promise<string>((res) => {
    if (readFd < 0) {
      res('');
      return;
    }
    const sock = new Socket({ fd: readFd, readable: true, writable: false });
    let bytes = '';
    sock.on('data', (d) => {
      bytes += d;
    });
    const done = (): void => {
      sock.destroy();
      res(bytes);
    };
    sock.on('end', done);
    sock.on('error', done);
  });
  return {
    child,
    pid: child.pid ?? -1,
    status,
    exited,
    stderr: () => err,
    stdout: () => out,
    async stop(signal: NodeJS.Signals = 'SIGINT') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Spawns and waits for "0\n" (at most dockerd's 16 s); throws with the status bytes otherwise. */
export async function startProxy(args: readonly string[], opts: SpawnOptions = {}): Promise<ProxyProc> {
  const p = spawnProxy(args, opts);
  const status = await withTimeout(p.status, READY_TIMEOUT_MS, 'timed out starting the userland proxy');
  if (status !== '0\n') {
    await p.stop('SIGKILL');
    throw new Error(`proxy failed to start: ${JSON.stringify(status)} stderr=${p.stderr()}`);
  }
  return p;
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new Error(what)), ms);
    }),
  ]);
}

/** Private_Dirty and RSS of a process in KiB, from /proc/PID/smaps_rollup. */
export function memoryOf(pid: number): { rssKiB: number; privateDirtyKiB: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: field('Rss'), privateDirtyKiB: field('Private_Dirty') };
}

/** True when the reference docker-proxy (of `version`) has been fetched (.ci/setup does it). */
export function haveReference(version: keyof typeof REF_PROXIES = '20.10'): boolean {
  try {
    execFileSync('test', ['-x', REF_PROXIES[version]]);
    return true;
  } catch {
    return false;
  }
}
