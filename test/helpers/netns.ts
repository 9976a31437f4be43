/**
 * Network-namespace "containers": a namespace with a veth pair, IPv4 and IPv6 addresses, and a
 * backend (backend.mjs) running inside, as dockerd's bridge network would give a container.
 * Without root the backend runs on loopback instead, and callers report the skip.
 * Every namespace and process is removed in destroy(), also after failures; names carry our pid
 * so that stale ones from a killed run can be told apart and removed by the global setup.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT, withTimeout } from './proxy.js';
import { afterAll, beforeAll } from 'vitest';
import { createNamespace, deleteNamespace } from './testbed.mjs';

export const IS_ROOT = process.getuid?.() === 0;
export const NS_PREFIX = 'upt';
let counter = 0;

export interface Backend {
  /** Where the proxy should forward: the container's IPv4 / IPv6 address (loopback without root). */
  ipv4: string;
  ipv6: string;
  /** True when the backend is really behind a veth in its own namespace. */
  inNamespace: boolean;
  /** The namespace's name (for `ip netns exec`), or null on loopback. */
  namespace: string | null;
  /** The veth ends on the host and in the namespace (namespace backends only). */
  hostInterface?: string;
  nsInterface?: string;
  /** Sends a control line (resume, listen) and optionally waits for an answer line. */
  command(line: string, waitFor?: string): Promise<void>;
  /** The next line it printed that starts with `prefix` (each line is given once), within 5 s. */
  output(prefix: string): Promise<string>;
  destroy(): Promise<void>;
}

/** The link-local IPv6 address of the backend's veth end, once it left DAD (namespace only). */
export async function linkLocalOf(backend: Backend): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const out = execFileSync('ip', ['-n', backend.namespace as string, '-6', 'addr', 'show', 'dev', backend.nsInterface as string, 'scope', 'link'], {
      encoding: 'utf8',
    });
    const host = execFileSync('ip', ['-6', 'addr', 'show', 'dev', backend.hostInterface as string, 'scope', 'link'], { encoding: 'utf8' });
    const m = /inet6 (fe80::[0-9a-f:]+)\/64/.exec(out);
    if (m && !out.includes('tentative') && host.includes('fe80::') && !host.includes('tentative')) return m[1] as string;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no link-local address on the backend veth');
}

/** Namespaces left by runs whose process is gone. */
export function removeStaleNamespaces(): void {
  if (!IS_ROOT) return;
  let list = '';
  try {
    list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const m = new RegExp(`^(${NS_PREFIX}(\\d+)x\\d+)`).exec(line);
    if (!m) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch {
      deleteNamespace(m[1] as string);
    }
  }
}

/**
 * Starts backend.mjs with the given arguments in a fresh namespace (root) or on loopback.
 */
export async function startBackend(args: string[]): Promise<Backend> {
  const n = counter++;
  if (!IS_ROOT) return launch(args, null, '127.0.0.1', '::1', ['--host', '127.0.0.1', '--host', '::1']);
  const name = `${NS_PREFIX}${process.pid}x${n}`;
  // Unique /24 and /64 per process and counter; veth names are limited to 15 characters.
  const a = 100 + ((process.pid >> 8) % 100);
  const b = ((process.pid + n * 37) % 250) + 1;
  const hostIf = `u${process.pid % 100000}h${n}`;
  const nsIf = `u${process.pid % 100000}c${n}`;
  const v4 = `10.${a}.${b}`;
  const v6 = `fd00:${a.toString(16)}:${b.toString(16)}`;
  createNamespace({ name, hostIf, nsIf, v4, v6 });
  return { ...(await launch(args, name, `${v4}.2`, `${v6}::2`, [])), hostInterface: hostIf, nsInterface: nsIf };
}

async function launch(args: string[], ns: string | null, ipv4: string, ipv6: string, hostArgs: string[]): Promise<Backend> {
  const script = join(ROOT, 'test/helpers/backend.mjs');
  const cmd = ns ? 'ip' : process.execPath;
  const argv = ns ? ['netns', 'exec', ns, process.execPath, script, ...args] : [script, ...args, ...hostArgs];
  const child: ChildProcess = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: { text: string; res: () => void }[] = [];
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.filter((x) => x.text === line)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.res();
    }
  });
  const waitLine = (text: string): Promise<void> => (lines.includes(text) ? Promise.resolve() : new Promise((res) => waiters.push({ text, res })));
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  const destroy = async (): Promise<void> => {
    child.stdin?.end();
    child.kill('SIGKILL');
    await withTimeout(exited, 5000, 'backend did not exit').catch(() => {});
    if (ns) deleteNamespace(ns);
  };
  try {
    await withTimeout(
      Promise.race([
        waitLine('ready'),
        exited.then(() => {
          throw new Error(`backend exited: ${stderr}`);
        }),
      ]),
      10_000,
      `backend not ready: ${stderr}`,
    );
  } catch (err) {
    await destroy();
    throw err;
  }
  return {
    ipv4,
    ipv6,
    inNamespace: ns !== null,
    namespace: ns,
    async output(prefix: string) {
      for (let i = 0; i < 250; i++) {
        const at = lines.findIndex((l) => l.startsWith(prefix));
        if (at >= 0) return lines.splice(at, 1)[0] as string;
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error(`backend printed no line starting with ${prefix}`);
    },
    async command(line: string, waitFor?: string) {
      child.stdin?.write(`${line}\n`);
      if (waitFor) await withTimeout(waitLine(waitFor), 5000, `backend did not answer ${line}`);
    },
    destroy,
  };
}

/**
 * The backend of a test file (or describe block): started in beforeAll, destroyed in afterAll,
 * also after a failure. The returned object is filled in by beforeAll, so tests read
 * `backend.ipv4` as usual.
 */
export function useBackend(args: string[]): Backend {
  const backend = {} as Backend;
  let started = false;
  beforeAll(async () => {
    Object.assign(backend, await startBackend(args));
    started = true;
  });
  afterAll(async () => {
    if (started) await backend.destroy();
  });
  return backend;
}
