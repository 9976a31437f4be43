/** The registration message of the shim protocol (src/shared-engine/engine-protocol.ts; native/shim.c sends it). */
import { describe, expect, it } from 'vitest';
import { parseRegistration } from '../../src/shared-engine/engine-protocol.js';

const msg = (type: string, ...parts: string[]): Buffer => Buffer.from(`${type}${parts.join('\0')}\0`);

describe('parseRegistration', () => {
  it('reads argv, the USERLAND_PROXY_* entries and the protocol field', () => {
    expect(parseRegistration(msg('R', '2', '-proto', 'tcp', 'USERLAND_PROXY_LOG_LEVEL=debug', 'protocol=2'))).toEqual({
      adopt: false,
      argv: ['-proto', 'tcp'],
      env: { USERLAND_PROXY_LOG_LEVEL: 'debug' },
      protocol: 2,
    });
  });
  it('a shim of protocol 1 sends no protocol field; A adopts', () => {
    expect(parseRegistration(msg('A', '0', 'USERLAND_PROXY_SHARED=true'))).toEqual({
      adopt: true,
      argv: [],
      env: { USERLAND_PROXY_SHARED: 'true' },
      protocol: 1,
    });
  });
  it('ignores anything else after argv, a malformed protocol field included; refuses a bad argc', () => {
    expect(parseRegistration(msg('R', '0', 'PATH=/bin', 'protocol=x', 'protocol=0'))?.protocol).toBe(1);
    expect(parseRegistration(msg('R', '3', 'a'))).toBeNull();
    expect(parseRegistration(msg('R', '-1'))).toBeNull();
  });
});
