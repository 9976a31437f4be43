/**
 * The one tracker of every process a test spawns (proxies, standalone runs): each is killed in
 * cleanup, also after a failure, so no test leaves a process or a bound port behind.
 */
import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();

/** Tracks a child until it exits; resolves its exit. */
export function track(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  live.add(child);
  return new Promise((res) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    });
  });
}

/** SIGKILLs every tracked process and waits for each to exit (afterEach / afterAll). */
export async function killTracked(): Promise<void> {
  await Promise.all(
    [...live].map(
      (c) =>
        new Promise((res) => {
          c.once('exit', res);
          c.kill('SIGKILL');
        }),
    ),
  );
}
