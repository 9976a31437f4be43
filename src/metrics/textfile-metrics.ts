/**
 * Metrics in docker mode, node_exporter's textfile-collector way: hundreds of short-lived
 * proxies cannot each own a scrape port, so with USERLAND_PROXY_TEXTFILE_DIR set each one keeps
 * `<proto>_<host-ip>_<port>.prom` in that directory up to date (written to a temporary name and
 * renamed, so the collector never reads half a file) and removes it on exit.
 */
import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TEXTFILE_INTERVAL_MS } from '../core/constants.js';
import { createRegistry } from './metrics.js';
import type { MappingState } from './mapping-state.js';

/** A running textfile writer. */
export interface TextfileWriter {
  /** Writes the file now. */
  write(): Promise<void>;
  /** Stops updating and removes the file (synchronously: called on the way out). */
  remove(): void;
  /** Stops updating; the file stays (a successor writes it). */
  stop(): void;
}

/** Starts writing the mapping's metrics file every TEXTFILE_INTERVAL_MS (docker-mapping.ts builds the state). */
export function startTextfileWriter(dir: string, state: MappingState): TextfileWriter {
  const m = state.mapping;
  const registry = createRegistry(() => [state], { defaultMetrics: false });
  const file = join(dir, `${m.proto}_${m.host.address}_${m.hostPort}.prom`);
  const tmp = join(dir, `.${m.proto}_${m.host.address}_${m.hostPort}.prom.${process.pid}.tmp`);
  let stopped = false;
  const write = async (): Promise<void> => {
    const text = await registry.metrics();
    if (stopped) return;
    writeFileSync(tmp, text);
    renameSync(tmp, file);
  };
  const timer = setInterval(() => void write().catch(() => {}), TEXTFILE_INTERVAL_MS);
  timer.unref();
  return {
    write,
    stop() {
      stopped = true;
      clearInterval(timer);
    },
    remove() {
      stopped = true;
      clearInterval(timer);
      for (const f of [file, tmp]) {
        try {
          unlinkSync(f);
        } catch {
          // not there
        }
      }
    },
  };
}
