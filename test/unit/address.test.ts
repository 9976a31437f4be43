import { describe, expect, it } from 'vitest';
import { ipFromBytes, ipv6ToBytes, isUnspecified, joinHostPort, parseIp } from '../../src/core/address.js';

describe('parseIp()', () => {
  it('parseIp() classifies IPv4 and IPv6 literals', () => {
    expect(parseIp('10.0.0.1')).toEqual({ address: '10.0.0.1', family: 4 });
    expect(parseIp('fd00::2')).toEqual({ address: 'fd00::2', family: 6 });
    expect(parseIp('::')).toEqual({ address: '::', family: 6 });
  });

  it('parseIp() maps IPv4-mapped IPv6 to IPv4 in every spelling', () => {
    expect(parseIp('::ffff:10.1.2.3')).toEqual({ address: '10.1.2.3', family: 4 });
    expect(parseIp('::FFFF:7f00:1')).toEqual({ address: '127.0.0.1', family: 4 });
    expect(parseIp('0:0:0:0:0:ffff:10.1.2.3')).toEqual({ address: '10.1.2.3', family: 4 });
    expect(parseIp('::ffff:0:10.1.2.3')?.family).toBe(6);
    expect(parseIp('64:ff9b::10.1.2.3')?.family).toBe(6);
  });

  it('parseIp() rejects host names, CIDRs, brackets and junk', () => {
    for (const bad of ['', 'localhost', '10.0.0.1/24', '[::1]', '1.2.3', '300.1.1.1', ' 1.2.3.4', '1.2.3.4:80']) {
      expect(parseIp(bad), bad).toBeNull();
    }
  });
});

describe('joinHostPort() and isUnspecified()', () => {
  it('joinHostPort() brackets IPv6 as Go does', () => {
    expect(joinHostPort('1.2.3.4', 80)).toBe('1.2.3.4:80');
    expect(joinHostPort('::1', 80)).toBe('[::1]:80');
  });
  it('isUnspecified() recognises both wildcards', () => {
    expect(isUnspecified({ address: '0.0.0.0', family: 4 })).toBe(true);
    expect(isUnspecified({ address: '::', family: 6 })).toBe(true);
    expect(isUnspecified({ address: '0:0::0', family: 6 })).toBe(true);
    expect(isUnspecified({ address: '::1', family: 6 })).toBe(false);
  });
});

describe('ipFromBytes()', () => {
  it('ipFromBytes() prints the native engine’s address bytes as the text parseIp() gives', () => {
    const b = Buffer.alloc(16);
    b.set([10, 1, 2, 3]);
    expect(ipFromBytes(b, 4)).toBe('10.1.2.3');
    expect(ipFromBytes(ipv6ToBytes('fd00:0:0::2'), 6)).toBe('fd00::2');
    expect(ipFromBytes(ipv6ToBytes('2001:db8:0:0:1:0:0:1'), 6)).toBe('2001:db8::1:0:0:1');
    expect(ipFromBytes(Buffer.alloc(16), 6)).toBe('::');
    expect(ipFromBytes(ipv6ToBytes('::1'), 6)).toBe('::1');
  });
});
