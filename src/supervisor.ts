/**
 * Standalone mode's main thread: one worker thread per mapping, started all-or-nothing,
 * restarted with exponential backoff when it crashes (never taking other mappings down),
 * reconfigured live (added mappings start, removed ones drain, unchanged ones are not touched),
 * and drained on shutdown.
 */
import { Worker } from 'node:worker_threads';
import type { StandaloneConfig } from './config.js';
import { RESTART_BACKOFF_MAX_MS, RESTART_BACKOFF_MIN_MS, RESTART_RESET_AFTER_MS, STATS_TIMEOUT_MS } from './constants.js';
import { ProxyError } from './errors.js';
import type { Log } from './logger.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';
import { selectEngine, type EngineName } from './native-engine.js';
import type { Mapping } from './publish-spec.js';
import type { TcpStats } from './tcp-forwarder.js';
import type { UdpStats } from './udp-forwarder.js';

/** Live state of one mapping, as metrics and health checks see it. */
export interface MappingState {
  mapping: Mapping;
  up: boolean;
  restarts: number;
  tcp: TcpStats | null;
  udp: UdpStats | null;
}

interface Slot {
  key: string;
  init: WorkerInit;
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
const WORKER: URL = typeof __USERLAND_PROXY_WORKER_SOURCE__ === 'string'
  ? new URL(`data:text/javascript;base64,${Buffer.from(__USERLAND_PROXY_WORKER_SOURCE__).toString('base64')}`)
  : new URL('./worker.js', import.meta.url);

/** What identifies a mapping across reloads: everything that would change its behaviour. */
function slotKey(init: WorkerInit): string {
  const { spec: _spec, ...m } = init.mapping;
  const { mapping: _m, crashAfterMs: _c, ...settings } = init;
  return JSON.stringify([m, settings]);
}

function initsOf(config: StandaloneConfig, crashId: string | undefined, engine: EngineName): WorkerInit[] {
  return config.mappings.map((mapping) => ({
    mapping,
    engine,
    udpIdleTimeoutMs: config.udpIdleTimeoutMs,
    udpMaxFlows: config.udpMaxFlows,
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    lingerTimeoutMs: config.lingerTimeoutMs,
    maxConnections: config.maxConnections,
    maxBufferBytes: config.maxBufferBytes,
    logLevel: config.logLevel,
    logFile: config.logFile,
    crashAfterMs: crashId === mapping.id ? 200 : undefined,
  }));
}

/** Runs and supervises the workers of a configuration. */
export class Supervisor {
  readonly #log: Log;
  readonly #slots = new Map<string, Slot>();
  readonly #crashId: string | undefined;
  #statsSeq = 0;

  /** The engine workers run: resolved here, so that a fallback warns once, not per worker. */
  #engine(config: StandaloneConfig): EngineName {
    return selectEngine(config.engine, (msg) => this.#log.warn({}, msg), 'UPROXY_ERR_CONFIG');
  }

  constructor(log: Log, opts: { crashMappingId?: string | undefined } = {}) {
    this.#log = log;
    this.#crashId = opts.crashMappingId;
  }

  /** Every mapping's state (latest stats from the last refresh). */
  get states(): MappingState[] {
    return [...this.#slots.values()].map((s) => s.state);
  }

  /** True when every mapping is bound and serving. */
  get allUp(): boolean {
    return this.states.every((s) => s.up);
  }

  /** Starts every mapping; all-or-nothing: on the first failure everything stops and it throws. */
  async start(config: StandaloneConfig): Promise<void> {
    const slots = initsOf(config, this.#crashId, this.#engine(config)).map((init) => this.#newSlot(init));
    try {
      await Promise.all(slots.map((s) => this.#launch(s)));
    } catch (err) {
      await Promise.all(slots.map((s) => this.#stop(s, 0)));
      throw err;
    }
  }

  /**
   * Applies a new configuration: mappings no longer present drain and stop, new ones start
   * (all-or-nothing among the new ones), unchanged ones are not touched.
   */
  async reload(config: StandaloneConfig, drainTimeoutMs: number): Promise<{ added: number; removed: number; kept: number }> {
    const wanted = new Map(initsOf(config, undefined, this.#engine(config)).map((i) => [slotKey(i), i]));
    const removed = [...this.#slots.values()].filter((s) => !wanted.has(s.key));
    const added = [...wanted.entries()].filter(([k]) => !this.#slots.has(k)).map(([, init]) => init);
    // Free the ports of removed mappings first: an edited mapping may reuse them.
    await Promise.all(removed.map((s) => this.#stop(s, drainTimeoutMs)));
    const fresh = added.map((init) => this.#newSlot(init));
    try {
      await Promise.all(fresh.map((s) => this.#launch(s)));
    } catch (err) {
      await Promise.all(fresh.map((s) => this.#stop(s, 0)));
      throw err;
    }
    return { added: added.length, removed: removed.length, kept: this.#slots.size - added.length };
  }

  /** Drains every mapping (at most drainTimeoutMs) and stops all workers. */
  async stopAll(drainTimeoutMs: number): Promise<void> {
    await Promise.all([...this.#slots.values()].map((s) => this.#stop(s, drainTimeoutMs)));
  }

  /** Asks every running worker for its counters (at most STATS_TIMEOUT_MS) and stores them. */
  async refreshStats(): Promise<void> {
    await Promise.all([...this.#slots.values()].map((slot) => new Promise<void>((resolve) => {
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
    })));
  }

  #newSlot(init: WorkerInit): Slot {
    const slot: Slot = {
      key: slotKey(init), init, worker: null, stopping: false, readyAt: 0, consecutive: 0, timer: null,
      state: { mapping: init.mapping, up: false, restarts: 0, tcp: null, udp: null },
    };
    this.#slots.set(slot.key, slot);
    return slot;
  }

  /** Starts the slot's worker; resolves when it serves, rejects with its binding error. */
  #launch(slot: Slot): Promise<void> {
    return new Promise((resolve, reject) => {
      const worker = new Worker(WORKER, { workerData: slot.init });
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

  /** Drains and stops one slot's worker; removes the slot. */
  async #stop(slot: Slot, drainTimeoutMs: number): Promise<void> {
    slot.stopping = true;
    if (slot.timer) clearTimeout(slot.timer);
    this.#slots.delete(slot.key);
    const w = slot.worker;
    if (!w) return;
    const exited = new Promise<void>((r) => w.once('exit', () => r()));
    w.postMessage({ type: 'drain', timeoutMs: drainTimeoutMs } satisfies ToWorker);
    const hard = setTimeout(() => void w.terminate(), drainTimeoutMs + 1000);
    await exited;
    clearTimeout(hard);
  }
}
