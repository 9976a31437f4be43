/**
 * The TCP data path: each direction reads into reusable buffers (`onread`) instead of letting
 * Node allocate a fresh 64 KiB backing store per read, and writes slices of them straight to the
 * other socket. That removes the per-chunk allocation and the garbage it leaves behind (35 MiB of
 * malloc heap after a 1 GiB transfer with the default read path, measured) and lets bulk reads
 * grow to RELAY_BIG_BUFFER.
 *
 * A buffer may be read into again only when nothing references it: after `dst.write(slice)`, a
 * `dst.writableLength` of 0 means the kernel took every byte synchronously; otherwise the write
 * request still points into the buffer, which stays pinned until that write's callback. Write
 * callbacks run in order, so a FIFO of pinned buffers per direction and one shared callback
 * suffice (no closure per chunk).
 *
 * Buffer size adapts per direction: RELAY_SMALL_BUFFER while reads are small (an idle connection
 * pins only that much per direction), RELAY_BIG_BUFFER after a read fills the buffer, back to
 * small after RELAY_SHRINK_AFTER consecutive small reads, or when the forwarder's idle sweep finds
 * that a direction holding a big buffer has read nothing since the last sweep: 10 000 keep-alive
 * connections that once moved a large response must not pin 2 x 256 KiB each. Buffers come from
 * and return to small process-wide free lists. Backpressure: when `dst.write()` reports its high-water mark, reading
 * stops until 'drain'; memory per direction is bounded by that mark plus one buffer.
 *
 * Process budget: bytes queued in write queues (not taken by the kernel at once) are counted
 * across every connection of this thread. Above RELAY_QUEUE_BUDGET a direction pauses after any
 * queued write and reads into small buffers only, so a crowd of stalled readers costs about one
 * buffer each instead of the high-water mark each (audit M6).
 *
 * Resets at EOF (audit H3): libuv before 1.52 (Node 20, 22) reports EOF when epoll says POLLHUP
 * after a partial read, without reading the ECONNRESET that a reset right after the data left
 * pending (libuv#2319, fixed by libuv PR #4997). Before passing an EOF on as a FIN we therefore
 * write zero bytes to the source: on a reset socket that write fails with the pending
 * ECONNRESET (the socket errors and the relay resets the other side); after a real FIN it
 * succeeds and the FIN goes on. The probe goes through Node's public write path and costs one
 * syscall per connection.
 */
import type { Socket } from 'node:net';
import { swapReadBuffer } from '../core/node-internals.js';
import { RELAY_BIG_BUFFER, RELAY_FREE_BIG, RELAY_FREE_SMALL, RELAY_QUEUE_BUDGET, RELAY_SHRINK_AFTER, RELAY_SMALL_BUFFER } from '../core/constants.js';

const freeSmall: Buffer[] = [];
const freeBig: Buffer[] = [];
const EMPTY = Buffer.alloc(0);
/** Bytes in write queues of every relay on this thread (see the top of this file). */
let queuedBytes = 0;

/** Bytes queued by every relay on this thread (for tests and diagnostics). */
export function relayQueuedBytes(): number {
  return queuedBytes;
}

function take(size: number): Buffer {
  const list = size === RELAY_BIG_BUFFER ? freeBig : freeSmall;
  return list.pop() ?? Buffer.allocUnsafeSlow(size);
}

function give(buf: Buffer): void {
  if (buf.length === RELAY_BIG_BUFFER) {
    if (freeBig.length < RELAY_FREE_BIG) freeBig.push(buf);
  } else if (freeSmall.length < RELAY_FREE_SMALL) {
    freeSmall.push(buf);
  }
}

/** Sizes of the process-wide free lists (for tests and diagnostics). */
export function relayPoolStats(): { freeSmall: number; freeBig: number } {
  return { freeSmall: freeSmall.length, freeBig: freeBig.length };
}

/** The counters a direction adds to (live, so metrics see long transfers as they happen). */
export interface PumpCounters {
  bytesIn: number;
  bytesOut: number;
  pausesClient: number;
  pausesUpstream: number;
}

/** One direction of a relay: reads from a source socket (via onread) and writes to dst. */
export class Pump {
  /** Where the source's next read lands; owned by this pump. */
  #buf: Buffer = take(RELAY_SMALL_BUFFER);
  /** Per write in flight: the buffer it pins, or null when it completed synchronously. */
  readonly #pinned: (Buffer | null)[] = [];
  /** Per write in flight: the bytes it added to queuedBytes. */
  readonly #queued: number[] = [];
  /** Writes completed since the last idle sweep (bytes moving out count as activity). */
  #writes = 0;
  /** Reading stopped for the queue budget alone: the next completed write restarts it ('drain' would not come). */
  #budgetPaused = false;
  #smallReads = 0;
  #dst: Socket | null = null;
  #src: Socket | null = null;
  /** Reads since the last idle sweep. */
  #reads = 0;
  readonly #counters: PumpCounters;
  /** Client to upstream (counts bytesIn, pausesClient) or the reverse. */
  readonly #inbound: boolean;

  /** Where an exception of this pump's callbacks goes (its mapping's fault sink). */
  readonly #fault: (err: unknown) => void;

  constructor(counters: PumpCounters, inbound: boolean, fault: (err: unknown) => void) {
    this.#counters = counters;
    this.#inbound = inbound;
    this.#fault = fault;
  }

  /** The onread option for the source socket. */
  get onread(): { buffer: () => Buffer; callback: (n: number, buf: Buffer) => boolean } {
    return { buffer: this.#nextBuffer, callback: this.#onRead };
  }

  /** Starts pumping into dst: half-close and drain handling; beforeEnd runs right before dst.end(). */
  connect(src: Socket, dst: Socket, beforeEnd?: () => void): void {
    this.#dst = dst;
    this.#src = src;
    dst.on('drain', () => src.resume());
    // Half-close: shutdown(SHUT_WR) on dst after everything queued is written, unless the EOF
    // hid a reset (see the top of this file): then the failed probe errors src and the relay
    // resets dst instead.
    src.on('end', () => {
      try {
        if (!src.writable) {
          beforeEnd?.();
          dst.end();
          return;
        }
        src.write(EMPTY, (err) => {
          if (err) return;
          beforeEnd?.();
          dst.end();
        });
      } catch (err) {
        this.#fault(err);
      }
    });
  }

  readonly #nextBuffer = (): Buffer => this.#buf;

  // The bytes are in this.#buf: what #nextBuffer last handed out, or what sweep() installed
  // since (Node's own reference, passed as the second argument, is stale after that).
  // Node calls it from libuv's read callback: an exception here would be the process's, so it
  // goes to the mapping's fault sink (which ends that mapping alone in the shared engine).
  readonly #onRead = (n: number): boolean => {
    try {
      return this.#read(n);
    } catch (err) {
      this.#fault(err);
      return false;
    }
  };

  #read(n: number): boolean {
    const buf = this.#buf;
    const dst = this.#dst as Socket;
    this.#reads++;
    if (this.#inbound) this.#counters.bytesIn += n;
    else this.#counters.bytesOut += n;
    let more = dst.write(buf.subarray(0, n), this.#afterWrite);
    const pinned = dst.writableLength !== 0;
    this.#pinned.push(pinned ? buf : null);
    this.#queued.push(pinned ? n : 0);
    if (pinned) queuedBytes += n;
    // Over the process's queue budget no direction grows to a big buffer, pinned or not (audit M6:
    // a reader's first writes complete at once, its buffer grew, and its first stalled read then
    // pinned 256 KiB whatever the budget said): its queue then grows by small reads at most.
    const overBudget = queuedBytes > RELAY_QUEUE_BUDGET;
    if (pinned && overBudget && more) {
      more = false;
      this.#budgetPaused = true;
    }
    let size = buf.length;
    if (overBudget) {
      size = RELAY_SMALL_BUFFER;
    } else if (n === buf.length) {
      size = RELAY_BIG_BUFFER;
      this.#smallReads = 0;
    } else if (n <= RELAY_SMALL_BUFFER) {
      if (++this.#smallReads >= RELAY_SHRINK_AFTER) {
        size = RELAY_SMALL_BUFFER;
        this.#smallReads = 0;
      }
    } else {
      this.#smallReads = 0;
    }
    if (pinned) {
      this.#buf = take(size);
    } else if (size !== buf.length) {
      give(buf);
      this.#buf = take(size);
    }
    if (!more) {
      if (this.#inbound) this.#counters.pausesClient++;
      else this.#counters.pausesUpstream++;
      return false;
    }
    return true;
  }

  readonly #afterWrite = (): void => {
    try {
      this.#writes++;
      queuedBytes -= this.#queued.shift() ?? 0;
      const b = this.#pinned.shift();
      if (b) give(b);
      if (this.#budgetPaused) {
        this.#budgetPaused = false;
        this.#src?.resume();
      }
    } catch (err) {
      this.#fault(err);
    }
  };

  /** Bytes this direction has queued and not yet written (destroying the socket drops them). */
  get pending(): number {
    return this.#queued.reduce((a, b) => a + b, 0);
  }

  /**
   * Called by the forwarder's periodic sweep: returns how many reads and completed writes
   * happened since the previous sweep, and gives a direction that holds a big buffer and read nothing a small one. Between
   * reads nothing references the next-read buffer, so it can be swapped in the handle (libuv only
   * writes into it during a read callback on this thread).
   */
  sweep(): number {
    const reads = this.#reads + this.#writes;
    this.#reads = 0;
    this.#writes = 0;
    if (reads > 0 || this.#buf.length !== RELAY_BIG_BUFFER) return reads;
    const small = take(RELAY_SMALL_BUFFER);
    if (!swapReadBuffer(this.#src, small)) {
      give(small);
      return reads;
    }
    give(this.#buf);
    this.#buf = small;
    this.#smallReads = 0;
    return reads;
  }

  /** Returns the idle buffer to the pool once the source is closed; forgets queued bytes. */
  release(): void {
    give(this.#buf);
    this.#buf = EMPTY;
  }

  /** The destination is gone: its queued writes will never complete (no callbacks on destroy). */
  dropQueued(): void {
    for (const n of this.#queued.splice(0)) queuedBytes -= n;
    this.#pinned.length = 0;
  }
}
