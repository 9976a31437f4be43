/**
 * The shared engines (src/shared-engine/engine.ts) of this checkout, found in /proc: by the control socket name
 * in their environment (each test run, and each lifecycle test, names its own).
 */
import { readlinkSync } from 'node:fs';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { killTracked } from './processes.js';
import { enginePids } from './testbed.mjs';

export { enginePids };

/**
 * This run's engine name: set for the test workers by vitest.config.ts, which runs in the main
 * process (where global-setup.ts runs too) and derives it from that pid.
 */
export const RUN_ENGINE_SOCKET = process.env.USERLAND_PROXY_ENGINE_SOCKET ?? `upt-test-${process.pid}`;

/** SIGKILLs the engines named `name` and `name-*` (default: every engine of this run). */
export function killEngines(name = RUN_ENGINE_SOCKET): void {
  for (const pid of [...enginePids(name), ...enginePids(name, true)]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

let own = 0;
/**
 * An engine of the caller's own (a unique name): for tests that measure the serving process's
 * fds or memory, which other suites' mappings must not disturb. Killed with the run's engines.
 */
export function ownEngineEnv(): Record<string, string> {
  return { USERLAND_PROXY_ENGINE_SOCKET: `${RUN_ENGINE_SOCKET}-own${process.pid}x${own++}` };
}

/**
 * The process that serves a proxy's mapping: the proxy itself in per-port mode, or the engine of
 * `env`'s name when the proxy is a shim.
 */
export function servingPid(pid: number, env: Record<string, string>): number {
  let exe = '';
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return pid;
  }
  if (!exe.endsWith('/userland-proxy-shim')) return pid;
  const [engine] = enginePids(env.USERLAND_PROXY_ENGINE_SOCKET ?? RUN_ENGINE_SOCKET);
  if (engine === undefined) throw new Error(`no engine named ${env.USERLAND_PROXY_ENGINE_SOCKET}`);
  return engine;
}

/** Docker mode's two process models, for suites that run in both. */
export const DOCKER_MODES = [
  { mode: 'shared engine', shared: 'true' },
  { mode: 'per-port process', shared: 'false' },
] as const;

/**
 * Runs the enclosing describe's proxies in one model: spawnProxy passes our environment on, so
 * USERLAND_PROXY_SHARED is set for the block and restored after it.
 */
export function useDockerMode(shared: 'true' | 'false'): void {
  let saved: string | undefined;
  beforeAll(() => {
    saved = process.env.USERLAND_PROXY_SHARED;
    process.env.USERLAND_PROXY_SHARED = shared;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.USERLAND_PROXY_SHARED;
    else process.env.USERLAND_PROXY_SHARED = saved;
  });
}

/**
 * Engines of a test file's own: each call of the returned function gives a new name (`tag` tells
 * the files apart) and the environment that selects it, shared mode on. After each test the
 * processes the test tracked are killed first (so that no shim registers again), then its engines.
 */
export function useOwnEngines(tag: string): (extra?: Record<string, string>) => { name: string; env: Record<string, string> } {
  let n = 0;
  let names: string[] = [];
  afterEach(async () => {
    await killTracked();
    for (const name of names) killEngines(name);
    names = [];
  });
  return (extra = {}) => {
    const name = `${RUN_ENGINE_SOCKET}-${tag}${process.pid}x${n++}`;
    names.push(name);
    return { name, env: { USERLAND_PROXY_ENGINE_SOCKET: name, USERLAND_PROXY_SHARED: 'true', ...extra } };
  };
}
