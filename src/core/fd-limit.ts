/**
 * One file-descriptor budget per process, shared by every mapping (worker threads included, through
 * shared memory), both engines and the HTTP endpoint.
 *
 * Past RLIMIT_NOFILE, accept() fails with EMFILE; libuv then silently accepts and closes the
 * pending connections (its reserve-fd trick) without telling JavaScript, and a dial, a pipe or a
 * UDP flow socket fails mid-connection. So every connection and flow takes its fds from this
 * budget before it opens anything, and is refused at once (counted as a limit refusal, logged)
 * when the budget is spent. A TCP connection takes its two sockets, on either engine. The native
 * engine's pipes (one per direction while a burst is in flight, pooled after) take 2 fds each
 * when made and give them back when closed, from an allowance of their own (1/PIPE_SHARE_DIVISOR
 * of the fds, set apart when the native engine can run): with it spent, a burst goes on without
 * a pipe (peek and copy, native/tcp.c), so pipes never refuse or break a connection, and never
 * take the fds of one the budget admits (audit N8). A UDP flow takes one socket. Listening
 * sockets take one each, the HTTP endpoint its connection cap. FD_RESERVE stays free for Node
 * itself, logs and the native engine's epoll.
 */
import { readFileSync } from 'node:fs';
import { FD_OTHERS_SHARE_DIVISOR, FD_RESERVE, PIPE_SHARE_DIVISOR } from './constants.js';

/** fds one TCP connection takes from the budget: its two sockets (either engine). */
export const TCP_CONNECTION_FDS = 2;

/**
 * The fds one mapping of the shared engine may hold (audit N7): the budget less the share kept
 * for the others (FD_OTHERS_SHARE_DIVISOR).
 */
export function mappingShare(budget: FdBudget): number {
  return Math.max(TCP_CONNECTION_FDS, budget.limit - Math.ceil(budget.limit / FD_OTHERS_SHARE_DIVISOR));
}

/** The soft RLIMIT_NOFILE of this process (Node raises it to the hard limit at start), or null. */
export function openFileLimit(): number | null {
  try {
    const line = /^Max open files\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!line || line[1] === 'unlimited') return null;
    return Number(line[1]);
  } catch {
    return null;
  }
}

/** What a worker needs to join its process's budget (structured-clone safe). */
export interface SharedBudget {
  cells: Int32Array;
  limit: number;
  /** This worker's own cell (> 0), or 0 for none. */
  own: number;
}

/** Workers whose takes are also counted in a cell of their own (see release()). */
const OWN_CELLS = 4096;
/** After the own cells: the pipes' allowance, then the pipe fds in use (native/access.c). */
const PIPE_LIMIT_CELL = OWN_CELLS + 1;

/**
 * The process fd budget: cells[0] counts the fds taken, out of `limit`. A worker's takes also
 * count in its own cell, so that when it dies (a crash, a terminate) the supervisor can give back
 * everything it held at once.
 */
export class FdBudget {
  readonly cells: Int32Array;
  readonly limit: number;
  /** This side's own cell (0: none). */
  readonly own: number;
  /** Own cells free for workers (supervisor side). */
  readonly #free: number[] = [];

  constructor(shared: SharedBudget) {
    this.cells = shared.cells;
    this.limit = shared.limit;
    this.own = shared.own;
  }

  /**
   * A new budget for this process: the fd limit less the reserve and `reserved` fds, less the
   * native engine's pipe allowance when `pipes` (the native engine can run here).
   */
  static forProcess(reserved = 0, pipes = false, limit = openFileLimit()): FdBudget {
    const cells = new Int32Array(new SharedArrayBuffer(4 * (PIPE_LIMIT_CELL + 2)));
    const total = limit === null ? 2 ** 31 - 1 : Math.max(0, limit - FD_RESERVE - reserved);
    const pipeFds = pipes ? Math.floor(total / PIPE_SHARE_DIVISOR) : 0;
    cells[PIPE_LIMIT_CELL] = pipeFds;
    const b = new FdBudget({ cells, limit: total - pipeFds, own: 0 });
    for (let i = OWN_CELLS; i >= 1; i--) b.#free.push(i);
    return b;
  }

  /** Takes n fds; false (nothing taken) when that would pass the limit. */
  take(n: number): boolean {
    if (Atomics.add(this.cells, 0, n) + n > this.limit) {
      Atomics.sub(this.cells, 0, n);
      return false;
    }
    if (this.own > 0) Atomics.add(this.cells, this.own, n);
    return true;
  }

  /** Gives n fds back. */
  give(n: number): void {
    Atomics.sub(this.cells, 0, n);
    if (this.own > 0) Atomics.sub(this.cells, this.own, n);
  }

  /** The shared part for a new worker, with a cell of its own when one is free. */
  forWorker(): SharedBudget {
    return { cells: this.cells, limit: this.limit, own: this.#free.pop() ?? 0 };
  }

  /** A worker is gone: gives back whatever it still held and frees its cell. */
  release(shared: SharedBudget): void {
    if (shared.own <= 0) return;
    Atomics.sub(this.cells, 0, Atomics.exchange(this.cells, shared.own, 0));
    this.#free.push(shared.own);
  }

  /** fds taken now. */
  get used(): number {
    return Atomics.load(this.cells, 0);
  }
}
