import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../src/core/duration.js';

describe('parseDuration()', () => {
  it('parseDuration() reads units and bare seconds', () => {
    expect(parseDuration('90')).toBe(90_000);
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
  });
  it('parseDuration() rejects junk and absurd values, naming them', () => {
    for (const bad of ['', 'abc', '-1s', '1d', '1 s s', 'NaN', 'Infinity']) {
      expect(() => parseDuration(bad), bad).toThrow(`"${bad}"`);
    }
    expect(() => parseDuration('999999999h')).toThrow('too large');
  });
});
