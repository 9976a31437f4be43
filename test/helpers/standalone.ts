/** Runs `bin/userland-proxy run|demo ...` and waits for its "ready:" line (or its exit). */
import { spawn, type ChildProcess } from 'node:child_process';
import { BIN, withTimeout } from './proxy.js';
import { track } from './processes.js';

export interface Standalone {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns standalone mode; resolves once it printed "ready:", rejects if it exits first. */
export async function startStandalone(
  args: string[],
  env: Record<string, string> = {},
  wait = true,
  launch: { bin?: string; prefix?: string[] } = {},
): Promise<Standalone> {
  const child = spawn(launch.bin ?? BIN, [...(launch.prefix ?? []), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, cwd: '/' });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => {
    out += d;
  });
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = track(child);
  const s: Standalone = {
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  if (wait) {
    await withTimeout(
      new Promise<void>((res, rej) => {
        const t = setInterval(() => {
          if (out.includes('ready:') || out.includes('demo backend:')) {
            clearInterval(t);
            res();
          }
        }, 20);
        void exited.then((e) => {
          clearInterval(t);
          rej(new Error(`exited ${JSON.stringify(e)}: ${err}`));
        });
      }),
      15_000,
      `standalone not ready: ${err}`,
    );
  }
  return s;
}

/** GET a URL; returns status and body. */
export async function get(url: string, method = 'GET', headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const r = await fetch(url, { method, headers, signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}

/** POST /-/reload as the README says (JSON content type); returns status and body. */
export function postReload(metricsPort: number, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return get(`http://127.0.0.1:${metricsPort}/-/reload`, 'POST', { 'content-type': 'application/json', ...headers });
}

/** Value of one sample in a Prometheus text exposition, or undefined. */
export function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.lastIndexOf('}'));
    const got = Object.fromEntries([...body.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v) && Object.keys(got).length === Object.keys(labels).length) {
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return undefined;
}
