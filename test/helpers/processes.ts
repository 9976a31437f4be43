/**
 * The one tracker of every process a test spawns (proxies, standalone runs): each is killed in
 * cleanup, also after a failure, so no test leaves a process or a bound port behind.
 */
import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();

/** A child's exit, untracked (a process its caller stops itself). */
export function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
}

/** Tracks a child until it exits; resolves its exit. */
export function track(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return exitOf(child);
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
