import { describe, expect, it } from 'vitest';
import { compileAccess, isAllowed, parseCidrs } from '../../src/core/access-list.js';

describe('parseCidrs()', () => {
  it('parseCidrs() reads lists and arrays of CIDRs and single addresses', () => {
    expect(parseCidrs('10.0.0.0/8, 192.0.2.7 ::1/128', 'X', 'UPROXY_ERR_CONFIG')).toEqual(['10.0.0.0/8', '192.0.2.7', '::1/128']);
    expect(parseCidrs(['fd00::/8'], 'X', 'UPROXY_ERR_CONFIG')).toEqual(['fd00::/8']);
  });
  it('parseCidrs() names the bad entry', () => {
    expect(() => parseCidrs('10.0.0.0/33', 'USERLAND_PROXY_ALLOW', 'UPROXY_ERR_BAD_ENV')).toThrow(
      'invalid USERLAND_PROXY_ALLOW entry "10.0.0.0/33": not a CIDR range',
    );
    expect(() => parseCidrs('example.com', 'X', 'UPROXY_ERR_CONFIG')).toThrow('"example.com"');
    expect(() => parseCidrs('1.2.3.4/8/9', 'X', 'UPROXY_ERR_CONFIG')).toThrow('not a CIDR');
    expect(() => parseCidrs(42, 'config key "allow"', 'UPROXY_ERR_CONFIG')).toThrow('invalid config key "allow": must be a list');
  });
});

describe('isAllowed()', () => {
  it('isAllowed() lets deny win and restricts to the allow list when there is one', () => {
    const r = compileAccess({ allow: ['127.0.0.0/8', '::1'], deny: ['127.0.0.2'] });
    expect(r).not.toBeNull();
    expect(isAllowed(r!, '127.0.0.1')).toBe(true);
    expect(isAllowed(r!, '127.0.0.2')).toBe(false);
    expect(isAllowed(r!, '10.0.0.1')).toBe(false);
    expect(isAllowed(r!, '::1')).toBe(true);
    expect(isAllowed(r!, undefined)).toBe(false);
    const d = compileAccess({ allow: [], deny: ['10.0.0.0/8'] });
    expect(isAllowed(d!, '10.1.2.3')).toBe(false);
    expect(isAllowed(d!, '192.0.2.1')).toBe(true);
    expect(compileAccess({ allow: [], deny: [] })).toBeNull();
  });
});

describe('isAllowed() across families (audit L9)', () => {
  it('isAllowed() matches IPv4 clients only with IPv4 rules or rules written as IPv4-mapped', () => {
    const anyV6 = compileAccess({ allow: [], deny: ['::/0'] })!;
    expect(isAllowed(anyV6, '127.0.0.1')).toBe(true);
    expect(isAllowed(anyV6, '::ffff:127.0.0.1')).toBe(true);
    expect(isAllowed(anyV6, '::1')).toBe(false);
    const bogons = compileAccess({ allow: [], deny: ['::/8'] })!;
    expect(isAllowed(bogons, '192.0.2.1')).toBe(true);
    const onlyV6 = compileAccess({ allow: ['::/1'], deny: [] })!;
    expect(isAllowed(onlyV6, '127.0.0.1')).toBe(false);
    const mapped = compileAccess({ allow: [], deny: ['::ffff:127.0.0.0/104'] })!;
    expect(isAllowed(mapped, '127.0.0.1')).toBe(false);
    expect(isAllowed(mapped, '::ffff:127.0.0.1')).toBe(false);
    expect(isAllowed(mapped, '10.0.0.1')).toBe(true);
    const v4rule = compileAccess({ allow: ['127.0.0.1'], deny: [] })!;
    expect(isAllowed(v4rule, '::ffff:127.0.0.1')).toBe(true);
    expect(isAllowed(v4rule, '::1')).toBe(false);
    const zoned = compileAccess({ allow: [], deny: ['fe80::/10'] })!;
    expect(isAllowed(zoned, 'fe80::1%eth0')).toBe(false);
  });
});
