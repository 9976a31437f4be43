import { describe, expect, it } from 'vitest';
import { recorder } from '../helpers/log.js';
import { RateLimitedLog, parseLogLevel, humanLine } from '../../src/core/logger.js';

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

describe('humanLine()', () => {
  it('humanLine() turns a JSON line into time, coloured level, mapping, message and fields', () => {
    const json = JSON.stringify({
      level: 'warn',
      time: '2026-11-30T08:12:58.920Z',
      pid: 1,
      mapping: 'tcp/127.0.0.1:80',
      maxConnections: 3,
      msg: 'connection limit reached',
    });
    expect(humanLine(json, false)).toBe('08:12:58.920 WARN  [tcp/127.0.0.1:80] connection limit reached maxConnections=3\n');
    expect(humanLine(json, true)).toBe('08:12:58.920 \x1b[33mWARN \x1b[0m [tcp/127.0.0.1:80] connection limit reached maxConnections=3\n');
    expect(humanLine('not json', false)).toBe('not json');
  });
});
