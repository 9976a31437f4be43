import { describe, expect, it } from 'vitest';
import { parseProxyProtocol, proxyHeader } from '../../src/core/proxy-protocol.js';

const v4 = { srcAddress: '192.0.2.10', srcPort: 51234, dstAddress: '127.0.0.1', dstPort: 8080 };
const v6 = { srcAddress: '::1', srcPort: 40000, dstAddress: 'fd00::2', dstPort: 443 };

describe('proxyHeader()', () => {
  it('proxyHeader() writes v1 text lines', () => {
    expect(proxyHeader('v1', v4)?.toString()).toBe('PROXY TCP4 192.0.2.10 127.0.0.1 51234 8080\r\n');
    expect(proxyHeader('v1', v6)?.toString()).toBe('PROXY TCP6 ::1 fd00::2 40000 443\r\n');
    // Never UNKNOWN (audit N2): ends it cannot express give no header at all; the caller resets.
    expect(proxyHeader('v1', { ...v4, dstAddress: '::1' })).toBeNull();
    expect(proxyHeader('v1', { ...v4, srcAddress: '' })).toBeNull();
    expect(proxyHeader('off', v4)).toBeNull();
  });

  it('proxyHeader() writes v2 binary headers (signature, PROXY command, family, addresses, ports)', () => {
    const h = proxyHeader('v2', v4) as Buffer;
    expect(h.subarray(0, 12).toString('hex')).toBe('0d0a0d0a000d0a515549540a');
    expect(h.subarray(12).toString('hex')).toBe(`2111000c${'c000020a'}${'7f000001'}${(51234).toString(16)}${(8080).toString(16).padStart(4, '0')}`);
    const h6 = proxyHeader('v2', v6) as Buffer;
    expect(h6.length).toBe(16 + 36);
    expect(h6.subarray(12, 16).toString('hex')).toBe('21210024');
    expect(h6.subarray(16, 32).toString('hex')).toBe('00000000000000000000000000000001');
    expect(h6.subarray(32, 48).toString('hex')).toBe('fd000000000000000000000000000002');
    expect(h6.readUInt16BE(48)).toBe(40000);
    expect(h6.readUInt16BE(50)).toBe(443);
    expect(proxyHeader('v2', { ...v4, dstAddress: '::1' })).toBeNull(); // never the LOCAL command
  });

  it('proxyHeader() drops zones and sends IPv4-mapped ends as IPv4 (audit L5)', () => {
    const ll = { srcAddress: 'fe80::b898:84ff:fedf:d946%aud-w0', srcPort: 35202, dstAddress: 'fe80::a823:84ff:fec3:e212%aud-w0', dstPort: 21065 };
    expect(proxyHeader('v1', ll)?.toString()).toBe('PROXY TCP6 fe80::b898:84ff:fedf:d946 fe80::a823:84ff:fec3:e212 35202 21065\r\n');
    const mapped = { srcAddress: '::ffff:127.0.0.1', srcPort: 1, dstAddress: '::ffff:127.0.0.1', dstPort: 2 };
    expect(proxyHeader('v1', mapped)?.toString()).toBe('PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n');
    expect(proxyHeader('v2', mapped)?.subarray(12, 16).toString('hex')).toBe('2111000c');
  });

  it('parseProxyProtocol() accepts off, v1, v2 and nothing else', () => {
    expect(parseProxyProtocol('v2')).toBe('v2');
    expect(parseProxyProtocol(undefined)).toBe('off');
    expect(() => parseProxyProtocol('v3')).toThrow('use off, v1 or v2');
  });
});
