import { describe, expect, it } from 'vitest';
import { RateLimitedLog, parseLogLevel, silentLog, type Log } from '../../src/logger.js';

function recorder(): { log: Log; lines: { obj: object; msg: string }[] } {
  const lines: { obj: object; msg: string }[] = [];
  return { log: { ...silentLog, warn: (obj, msg) => lines.push({ obj, msg }) }, lines };
}

describe('RateLimitedLog', () => {
  it('RateLimitedLog.warn() logs the first of a burst, then once per window with a count', async () => {
    const { log, lines } = recorder();
    const r = new RateLimitedLog(log, 50);
    for (let i = 0; i < 100; i++) r.warn('accept:EMFILE', { i }, 'accept failed');
    r.warn('other', {}, 'other');
    expect(lines.map((l) => l.msg)).toEqual(['accept failed', 'other']);
    await new Promise((res) => setTimeout(res, 60));
    r.warn('accept:EMFILE', {}, 'accept failed');
    expect(lines[2]?.obj).toEqual({ suppressed: 99 });
  });
});

describe('parseLogLevel()', () => {
  it('parseLogLevel() accepts pino levels only', () => {
    expect(parseLogLevel('debug', 'X')).toBe('debug');
    expect(() => parseLogLevel('verbose', 'X')).toThrow('invalid X "verbose"');
  });
});
