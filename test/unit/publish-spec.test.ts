import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ProxyError } from '../../src/core/errors.js';
import { checkOverlaps, parsePublishSpec } from '../../src/standalone/publish-spec.js';

const err = (spec: string) => {
  try {
    parsePublishSpec(spec);
  } catch (e) {
    expect(e).toBeInstanceOf(ProxyError);
    expect((e as ProxyError).exitCode).toBe(2);
    return (e as Error).message;
  }
  throw new Error(`expected "${spec}" to fail`);
};

describe('parsePublishSpec()', () => {
  it('parsePublishSpec() reads the full form, defaults and IPv6 brackets', () => {
    expect(parsePublishSpec('127.0.0.1:8080:10.0.0.2:80')).toMatchObject({
      id: 'tcp/127.0.0.1:8080',
      proto: 'tcp',
      host: { address: '127.0.0.1', family: 4 },
      hostPort: 8080,
      hostPortEnd: 8080,
      target: { address: '10.0.0.2', family: 4 },
      targetPort: 80,
    });
    expect(parsePublishSpec('8080:10.0.0.2:80/udp')).toMatchObject({ id: 'udp/0.0.0.0:8080', proto: 'udp' });
    expect(parsePublishSpec('[::1]:8080:[fd00::2]:80/udp')).toMatchObject({ id: 'udp/[::1]:8080', host: { family: 6 }, target: { address: 'fd00::2' } });
    expect(parsePublishSpec('[::]:53:10.0.0.2:53/udp').host).toEqual({ address: '::', family: 6 });
  });

  it('parsePublishSpec() maps equal-length ranges', () => {
    expect(parsePublishSpec('127.0.0.1:8000-8999:10.0.0.2:9000-9999')).toMatchObject({
      id: 'tcp/127.0.0.1:8000-8999',
      hostPort: 8000,
      hostPortEnd: 8999,
      targetPort: 9000,
    });
  });

  it('parsePublishSpec() names the problem and the spec', () => {
    expect(err('8000-8010:10.0.0.2:80')).toBe(
      'invalid publish spec "8000-8010:10.0.0.2:80": host ports 8000-8010 (11) and target ports 80 (1) differ in length',
    );
    expect(err('8080:10.0.0.2:80/sctp')).toBe('invalid publish spec "8080:10.0.0.2:80/sctp": protocol "sctp" is not tcp or udp');
    expect(err('::1:8080:10.0.0.2:80')).toContain('expected [HOST_IP:]HOST_PORT');
    expect(err('8080:fd00::2:80')).toContain('expected [HOST_IP:]HOST_PORT');
    expect(err('8080:[fd00::2:80')).toContain('expected [HOST_IP:]HOST_PORT');
    expect(err('8080:10.0.0.300:80')).toContain('target address "10.0.0.300" is not an IPv4 address');
    expect(err('8080:example.com:80')).toContain('"example.com" is not');
    expect(err('0:10.0.0.2:80')).toContain('host port 0 is out of range 1-65535');
    expect(err('8080:10.0.0.2:70000')).toContain('target port 70000 is out of range');
    expect(err('8090-8080:10.0.0.2:80-90')).toContain('ends before it starts');
    expect(err('8080:0.0.0.0:80')).toContain('wildcard');
    expect(err('8080:10.0.0.2')).toContain('expected');
    expect(err('')).toContain('empty');
    expect(err('80a:10.0.0.2:80')).toContain('host port "80a"');
  });
});

describe('checkOverlaps()', () => {
  const specs = (...s: string[]) => s.map(parsePublishSpec);
  it('checkOverlaps() accepts distinct bindings, tcp and udp on one port, and 0.0.0.0 beside ::', () => {
    expect(() => checkOverlaps(specs('8080:10.0.0.2:80', '8080:10.0.0.2:80/udp', '[::]:8080:10.0.0.2:80', '127.0.0.1:8081-8090:10.0.0.2:81-90'))).not.toThrow();
  });
  it('checkOverlaps() names both specs of a duplicate or an overlap', () => {
    expect(() => checkOverlaps(specs('8080:10.0.0.2:80', '8080:10.0.0.3:80'))).toThrow(
      'duplicate binding: "8080:10.0.0.2:80" and "8080:10.0.0.3:80" both bind tcp 0.0.0.0:8080',
    );
    expect(() => checkOverlaps(specs('127.0.0.1:8000-8100:10.0.0.2:8000-8100', '8050:10.0.0.2:80'))).toThrow(
      'overlapping bindings: "127.0.0.1:8000-8100:10.0.0.2:8000-8100" and "8050:10.0.0.2:80" both bind tcp 0.0.0.0:8050',
    );
  });
});

describe('parsePublishSpec() property: any string gives a mapping or a one-line config error', () => {
  const piece = fc.oneof(
    fc.constantFrom(
      '127.0.0.1',
      '[::1]',
      '::1',
      '0.0.0.0',
      '[fd00::2]',
      '10.0.0.2',
      '8080',
      '80-90',
      '70000',
      '0',
      '-',
      '[',
      ']',
      '/tcp',
      '/udp',
      '/',
      ':',
      '',
    ),
    fc.string({ maxLength: 8 }),
    fc.integer({ min: -1, max: 70000 }).map(String),
  );
  it('never throws anything but a one-line ProxyError', () => {
    fc.assert(
      fc.property(
        fc.array(piece, { maxLength: 6 }).map((a) => a.join(':')),
        (spec) => {
          try {
            const m = parsePublishSpec(spec);
            expect(m.hostPortEnd - m.hostPort).toBeGreaterThanOrEqual(0);
            expect(m.targetPort + (m.hostPortEnd - m.hostPort)).toBeLessThanOrEqual(65535);
          } catch (e) {
            expect(e).toBeInstanceOf(ProxyError);
            expect((e as Error).message).not.toContain('\n');
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
