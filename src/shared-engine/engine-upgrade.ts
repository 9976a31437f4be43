/**
 * `userland-proxy upgrade`: moves every docker mapping of this network namespace's shared engine
 * to a new engine running the code installed now, without unbinding a port or cutting a
 * connection (HAProxy's seamless reload, Envoy's hot restart). The new engine takes the control
 * socket's name and asks the old one to hand over (engine.ts, `--take-over`); each shim then
 * re-registers its listening socket with the new engine, and only once that accepts does the old
 * engine stop accepting on it; the old engine relays its established connections until they end
 * (at most USERLAND_PROXY_SHARED_DRAIN_TIMEOUT) and exits after the last.
 *
 * The new engine runs with the old one's environment (its log file, /metrics address, idle
 * timeout: what dockerd's environment gave it), read from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { UPGRADE_WAIT_MS } from '../core/constants.js';
import { CLI_JS } from '../paths.js';
import { queryEngine } from './engine-list.js';
import { engineSocketName } from './engine-protocol.js';
import { ProxyError } from '../core/errors.js';

/**
 * Starts an engine of the code installed now that takes this namespace's engine name over
 * (engine.ts `--take-over`); `env` is the environment dockerd gave the running engine.
 */
export function spawnTakeOver(env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, [fileURLToPath(CLI_JS), 'engine', '--take-over'], {
    detached: true, // not in our process group: a Ctrl-C of `upgrade` must not stop the engine
    stdio: 'ignore',
    env,
    cwd: '/',
  });
  child.unref();
  return child;
}

/** What moved, for a person. */
export interface UpgradeReport {
  from: { pid: number; version: string } | null;
  to: { pid: number; version: string } | null;
  mappings: number;
  moved: number;
  /** TCP connections established at the hand-over: the old engine relays them until they end. */
  draining: number;
}

/** Runs the hand-over; resolves once every mapping serves on the new engine (or the wait ends). */
export async function upgradeEngine(name = engineSocketName()): Promise<UpgradeReport> {
  const before = queryEngine(name);
  const old = before?.[0];
  if (!before || !old) return { from: null, to: null, mappings: 0, moved: 0, draining: 0 };
  if (typeof old.pid !== 'number') {
    throw new ProxyError('UPROXY_ERR_NATIVE', 'the running engine predates userland-proxy upgrade and cannot hand over: it serves on until its mappings end');
  }
  let env: NodeJS.ProcessEnv;
  try {
    env = Object.fromEntries(
      readFileSync(`/proc/${old.pid}/environ`, 'utf8')
        .split('\0')
        .filter((kv) => kv.includes('='))
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
  } catch (err) {
    throw new ProxyError('UPROXY_ERR_NATIVE', `cannot read the running engine's environment: ${(err as Error).message}`);
  }
  const child = spawnTakeOver(env);
  const serving = before.filter((r) => r.state === 'serving').length;
  const deadline = Date.now() + UPGRADE_WAIT_MS;
  let rows = before;
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    rows = queryEngine(name) ?? [];
    const moved = rows.filter((r) => r.pid === child.pid && r.state === 'serving').length;
    if (moved >= serving || Date.now() > deadline) break;
  }
  const to = rows.find((r) => r.pid === child.pid);
  // The old engine no longer answers (its name is the new engine's): what it relays is what was
  // established when it handed over.
  const draining = before.reduce((n, r) => n + (r.tcp?.active ?? 0), 0);
  return {
    from: { pid: old.pid, version: old.version },
    to: to ? { pid: to.pid, version: to.version } : child.pid ? { pid: child.pid, version: '?' } : null,
    mappings: serving,
    moved: rows.filter((r) => r.pid === child.pid && r.state === 'serving').length,
    draining,
  };
}
