/**
 * Durations in environment variables and config: `250ms`, `90s`, `5m`, `1h`, or a bare number of
 * seconds. Anything else is rejected with a message that names the value.
 */

/** The longest duration a timer can hold (setTimeout's 2^31-1 ms; longer ones fire after 1 ms). */
export const MAX_DURATION_MS = 2 ** 31 - 1;

const UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** Parses a duration into milliseconds; throws an Error naming the bad text. */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) throw new Error(`invalid duration "${text}" (use e.g. 500ms, 90s, 5m)`);
  const ms = Number(m[1]) * (UNITS[m[2] ?? 's'] as number);
  return checkDuration(ms, `"${text}"`);
}

/** Rounds a duration in ms and checks its upper bound; `shown` names it in the error. */
export function checkDuration(ms: number, shown: string): number {
  if (!Number.isFinite(ms) || ms > MAX_DURATION_MS) throw new Error(`duration ${shown} is too large (at most ${MAX_DURATION_MS / 1000}s)`);
  return Math.round(ms);
}
