/**
 * The shared engines (src/engine.ts) of this checkout, found in /proc: by the control socket name
 * in their environment (each test run, and each lifecycle test, names its own).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './proxy.js';

/**
 * This run's engine name: set for the test workers by vitest.config.ts, which runs in the main
 * process (where global-setup.ts runs too) and derives it from that pid.
 */
export const RUN_ENGINE_SOCKET = process.env.USERLAND_PROXY_ENGINE_SOCKET ?? `upt-test-${process.pid}`;

/** Pids of engines whose USERLAND_PROXY_ENGINE_SOCKET is `name`, or starts with `name-` when `prefix`. */
export function enginePids(name: string, prefix = false): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (!args.some((a) => a === join(ROOT, 'dist/cli.js') || a.endsWith('/dist/cli.js')) || !args.includes('engine')) continue;
      const env = readFileSync(`/proc/${d}/environ`, 'utf8').split('\0');
      const key = `USERLAND_PROXY_ENGINE_SOCKET=${name}`;
      if (!env.some((e) => e === key || (prefix && e.startsWith(`${key}-`)))) continue;
      pids.push(Number(d));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

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
