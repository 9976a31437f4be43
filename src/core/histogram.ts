/**
 * A histogram kept as plain numbers, observed once per connection (never per chunk) in a worker
 * and shipped to the main thread as a structured-clone-safe object at scrape time.
 */

/** Upstream connect time buckets, seconds (0.5 ms to 5 s). */
export const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Connection lifetime buckets, seconds (10 ms to 1 h). */
export const LIFETIME_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 1800, 3600];

/** Bucket counts (not cumulative; the last slot is +Inf), sum and count. */
export interface PlainHistogram {
  buckets: readonly number[];
  counts: number[];
  sum: number;
  count: number;
}

/** A zeroed histogram over the given upper bounds. */
export function newHistogram(buckets: readonly number[]): PlainHistogram {
  return { buckets, counts: new Array<number>(buckets.length + 1).fill(0), sum: 0, count: 0 };
}

/** Records one value. */
export function observe(h: PlainHistogram, value: number): void {
  let i = 0;
  while (i < h.buckets.length && value > (h.buckets[i] as number)) i++;
  h.counts[i] = (h.counts[i] as number) + 1;
  h.sum += value;
  h.count++;
}
