/**
 * Standalone mode's main thread: one worker thread per mapping, started all-or-nothing,
 * restarted with exponential backoff when it crashes (never taking other mappings down),
 * reconfigured live, and drained on shutdown.
 *
 * A reload is a transaction: added mappings start while the old ones still serve; a mapping that
 * takes over a removed one's port starts right after that one released its listener (the removed
 * mapping's open connections drain in the background); unchanged mappings are never touched. If
 * anything added cannot start, every added mapping stops and every released one is started again
 * with its previous settings, so exactly the previous set serves. A configured mapping that is not
 * serving stays listed (mapping_up 0, /readyz 503) and is retried with backoff: it never vanishes.
 */
import { Worker } from 'node:worker_threads';
import type { StandaloneConfig } from './config.js';
import { RESTART_BACKOFF_MAX_MS, RESTART_BACKOFF_MIN_MS, RESTART_RESET_AFTER_MS, STATS_TIMEOUT_MS } from '../core/constants.js';
import { MAX_DURATION_MS } from '../core/duration.js';
import { FdBudget } from '../core/fd-limit.js';
import { ProxyError } from '../core/errors.js';
import type { Log } from '../core/logger.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

/** A worker's start-up data but its fd budget cell, which each launch gets afresh. */
type SlotInit = Omit<WorkerInit, 'budget'>;
import { nativeLoadable, selectEngine } from '../data-path/native-engine.js';
import type { EngineName } from '../core/data-path-choice.js';
import type { Mapping } from './publish-spec.js';
import type { MappingState } from '../metrics/mapping-state.js';
import { WORKER_JS } from '../paths.js';

interface Slot {
  key: string;
  init: SlotInit;
  state: MappingState;
  worker: Worker | null;
  stopping: boolean;
  readyAt: number;
  consecutive: number;
  timer: NodeJS.Timeout | null;
}

declare const __USERLAND_PROXY_WORKER_SOURCE__: string | undefined;
/**
 * The single-file executable (deploy/sea) runs no file but its own, so its bundle carries the
 * worker module as source, started from a data: URL; everywhere else the worker is worker.js.
 */
const WORKER: URL =
  typeof __USERLAND_PROXY_WORKER_SOURCE__ === 'string'
    ? new URL(`data:text/javascript;base64,${Buffer.from(__USERLAND_PROXY_WORKER_SOURCE__).toString('base64')}`)
    : WORKER_JS;

/** What identifies a mapping across reloads: everything that would change its behaviour. */
function slotKey(init: SlotInit): string {
  const { spec: _spec, ...m } = init.mapping;
  const { mapping: _m, crashAfterMs: _c, ...settings } = init;
  return JSON.stringify([m, settings]);
}

function initsOf(config: StandaloneConfig, crashId: string | undefined, engine: EngineName): SlotInit[] {
  // The supervisor's own settings stay here; every other one goes to each worker as parsed.
  const { mappings, metrics: _m, drainTimeoutMs: _d, engine: _e, httpReload: _h, ...settings } = config;
  return mappings.map((mapping) => ({ ...settings, mapping, engine, crashAfterMs: crashId === mapping.id ? 200 : undefined }));
}

/** True when two mappings could want the same socket: same protocol, overlapping ports. */
function clash(a: Mapping, b: Mapping): boolean {
  return a.proto === b.proto && a.hostPort <= b.hostPortEnd && b.hostPort <= a.hostPortEnd;
}

/** Runs and supervises the workers of a configuration. */
export class Supervisor {
  readonly #log: Log;
  readonly #slots = new Map<string, Slot>();
  readonly #crashId: string | undefined;
  /** The fd budget of the whole process, shared with every worker. */
  readonly #budget: FdBudget;
  /** The configured mappings (slot key -> mapping id): what /readyz compares the live set with. */
  #configured = new Map<string, string>();
  /** Workers of removed mappings still draining their connections. */
  readonly #draining = new Set<Promise<void>>();
  /** The refresh in progress: concurrent scrapes share it (one message listener per worker). */
  #refreshing: Promise<void> | null = null;
  #statsSeq = 0;

  /** The engine workers run: resolved here, so that a fallback warns once, not per worker. */
  #engine(config: StandaloneConfig): EngineName {
    return selectEngine(config.engine, (msg) => this.#log.warn({}, msg), 'UPROXY_ERR_CONFIG');
  }

  /** `reservedFds`: fds kept out of the budget for the HTTP endpoint. */
  constructor(log: Log, opts: { crashMappingId?: string | undefined; reservedFds?: number } = {}) {
    this.#log = log;
    this.#crashId = opts.crashMappingId;
    this.#budget = FdBudget.forProcess(opts.reservedFds ?? 0, nativeLoadable());
  }

  /** Every mapping's state (latest stats from the last refresh). */
  get states(): MappingState[] {
    return [...this.#slots.values()].map((s) => s.state);
  }

  /** The ids of configured mappings that are not serving (none: ready). */
  get down(): string[] {
    return [...this.#configured].filter(([key]) => this.#slots.get(key)?.state.up !== true).map(([, id]) => id);
  }

  /** Starts every mapping; all-or-nothing: on the first failure everything stops and it throws. */
  async start(config: StandaloneConfig): Promise<void> {
    const inits = initsOf(config, this.#crashId, this.#engine(config));
    const slots = inits.map((init) => this.#newSlot(init));
    try {
      await Promise.all(slots.map((s) => this.#launch(s)));
    } catch (err) {
      await Promise.all(slots.map((s) => this.#stop(s, 0).exited));
      throw err;
    }
    this.#configured = new Map(slots.map((s) => [s.key, s.init.mapping.id]));
  }

  /**
   * Applies a new configuration as a transaction (see the top of this file). Resolves once every
   * added mapping serves; removed mappings finish draining in the background.
   */
  async reload(config: StandaloneConfig, drainTimeoutMs: number): Promise<{ added: number; removed: number; kept: number }> {
    const wanted = new Map(initsOf(config, undefined, this.#engine(config)).map((i) => [slotKey(i), i]));
    const removed = [...this.#slots.values()].filter((s) => !wanted.has(s.key));
    const added = [...wanted.entries()].filter(([k]) => !this.#slots.has(k)).map(([, init]) => init);
    const takesOver = (init: SlotInit): boolean => removed.some((s) => clash(s.init.mapping, init.mapping));
    const fresh: Slot[] = [];
    const released: Slot[] = [];
    const launch = async (inits: SlotInit[]): Promise<void> => {
      const slots = inits.map((init) => this.#newSlot(init));
      fresh.push(...slots);
      await Promise.all(slots.map((s) => this.#launch(s)));
    };
    try {
      await launch(added.filter((i) => !takesOver(i)));
      const late = added.filter(takesOver);
      const blocking = removed.filter((s) => late.some((i) => clash(s.init.mapping, i.mapping)));
      released.push(...blocking);
      await Promise.all(blocking.map((s) => this.#retire(s, drainTimeoutMs)));
      await launch(late);
    } catch (err) {
      await Promise.all(fresh.map((s) => this.#stop(s, 0).exited));
      // Restore what was released; a port taken meanwhile is retried with backoff (mapping_up 0).
      await Promise.all(
        released.map(async (old) => {
          const again = this.#newSlot({ ...old.init, crashAfterMs: undefined });
          try {
            await this.#launch(again);
          } catch (e) {
            this.#log.error({ mapping: again.init.mapping.id, err: (e as Error).message }, 'cannot restore mapping; retrying');
            if (!again.stopping) this.#scheduleRestart(again, 1);
          }
        }),
      );
      throw err;
    }
    await Promise.all(removed.filter((s) => !released.includes(s)).map((s) => this.#retire(s, drainTimeoutMs)));
    this.#configured = new Map([...wanted].map(([key, init]) => [key, init.mapping.id]));
    return { added: added.length, removed: removed.length, kept: this.#slots.size - added.length };
  }

  /** Drains every mapping (at most drainTimeoutMs) and stops all workers. */
  async stopAll(drainTimeoutMs: number): Promise<void> {
    await Promise.all([...[...this.#slots.values()].map((s) => this.#stop(s, drainTimeoutMs).exited), ...this.#draining]);
  }

  /** Refreshes every running worker's counters; concurrent callers share one refresh. */
  refreshStats(): Promise<void> {
    this.#refreshing ??= this.#refresh().finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  /** Asks every running worker for its counters (at most STATS_TIMEOUT_MS) and stores them. */
  async #refresh(): Promise<void> {
    await Promise.all(
      [...this.#slots.values()].map(
        (slot) =>
          new Promise<void>((resolve) => {
            const w = slot.worker;
            if (!w) {
              resolve();
              return;
            }
            const id = ++this.#statsSeq;
            const timer = setTimeout(done, STATS_TIMEOUT_MS);
            function done(): void {
              clearTimeout(timer);
              w?.off('message', onMessage);
              resolve();
            }
            const onMessage = (m: FromWorker): void => {
              if (m.type === 'stats' && m.id === id) {
                slot.state.tcp = m.tcp;
                slot.state.udp = m.udp;
                done();
              }
            };
            w.on('message', onMessage);
            w.postMessage({ type: 'stats', id } satisfies ToWorker);
          }),
      ),
    );
  }

  /** Stops a removed slot: resolves once its listeners are closed; its connections drain on. */
  async #retire(slot: Slot, drainTimeoutMs: number): Promise<void> {
    const { released, exited } = this.#stop(slot, drainTimeoutMs);
    this.#draining.add(exited);
    void exited.then(() => this.#draining.delete(exited));
    await released;
  }

  #newSlot(init: SlotInit): Slot {
    const slot: Slot = {
      key: slotKey(init),
      init,
      worker: null,
      stopping: false,
      readyAt: 0,
      consecutive: 0,
      timer: null,
      state: { mapping: init.mapping, up: false, restarts: 0, tcp: null, udp: null },
    };
    this.#slots.set(slot.key, slot);
    return slot;
  }

  /** Starts the slot's worker; resolves when it serves, rejects with its binding error. */
  #launch(slot: Slot): Promise<void> {
    return new Promise((resolve, reject) => {
      const budget = this.#budget.forWorker();
      const worker = new Worker(WORKER, { workerData: { ...slot.init, budget } satisfies WorkerInit });
      slot.worker = worker;
      let settled = false;
      let failure: string | null = null;
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') {
          slot.state.up = true;
          slot.readyAt = Date.now();
          settled = true;
          resolve();
        } else if (m.type === 'failed') {
          failure = m.message;
        }
      });
      worker.on('error', (err) => {
        this.#log.error({ mapping: slot.init.mapping.id, err: err.message }, 'worker crashed');
      });
      worker.on('exit', (code) => {
        this.#budget.release(budget);
        slot.state.up = false;
        if (slot.worker === worker) slot.worker = null;
        if (!settled) {
          settled = true;
          reject(new ProxyError('UPROXY_ERR_LISTEN', `mapping ${slot.init.mapping.id}: ${failure ?? `worker exited with code ${code} before it was ready`}`));
          return;
        }
        if (slot.stopping) return;
        this.#scheduleRestart(slot, code);
      });
    });
  }

  #scheduleRestart(slot: Slot, code: number): void {
    if (Date.now() - slot.readyAt > RESTART_RESET_AFTER_MS) slot.consecutive = 0;
    const delay = Math.min(RESTART_BACKOFF_MAX_MS, RESTART_BACKOFF_MIN_MS * 2 ** slot.consecutive);
    slot.consecutive++;
    slot.state.restarts++;
    // A restarted worker starts without the test crash hook.
    slot.init = { ...slot.init, crashAfterMs: undefined };
    this.#log.warn({ mapping: slot.init.mapping.id, code, restartInMs: delay, restarts: slot.state.restarts }, 'worker exited; restarting');
    slot.timer = setTimeout(() => {
      slot.timer = null;
      if (slot.stopping) return;
      this.#launch(slot).catch((err: Error) => {
        this.#log.error({ mapping: slot.init.mapping.id, err: err.message }, 'restart failed');
        if (!slot.stopping) this.#scheduleRestart(slot, 1);
      });
    }, delay);
  }

  /**
   * Drains and stops one slot's worker and removes the slot. `released` resolves once the
   * worker closed its listeners (the ports are free), `exited` once it is gone.
   */
  #stop(slot: Slot, drainTimeoutMs: number): { released: Promise<void>; exited: Promise<void> } {
    slot.stopping = true;
    if (slot.timer) clearTimeout(slot.timer);
    this.#slots.delete(slot.key);
    const w = slot.worker;
    if (!w) return { released: Promise.resolve(), exited: Promise.resolve() };
    const exited = new Promise<void>((r) => w.once('exit', () => r()));
    const released = new Promise<void>((r) => {
      const onMessage = (m: FromWorker): void => {
        if (m.type !== 'released') return;
        w.off('message', onMessage);
        r();
      };
      w.on('message', onMessage);
      void exited.then(() => r());
    });
    w.postMessage({ type: 'drain', timeoutMs: drainTimeoutMs } satisfies ToWorker);
    const hard = setTimeout(() => void w.terminate(), Math.min(drainTimeoutMs + 1000, MAX_DURATION_MS));
    return { released, exited: exited.then(() => clearTimeout(hard)) };
  }
}
