/**
 * Hostile input for docker mode: any argv and any USERLAND_PROXY_* environment yields a mapping
 * or a one-line ProxyError with the documented exit status (2 for syntax, 1 for values), never
 * anything else.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readDockerEnv } from '../../src/docker/docker-env.js';
import { parseDockerArgs, toDockerMapping } from '../../src/docker/docker-flags.js';
import { ProxyError } from '../../src/core/errors.js';

const token = fc.oneof(
  fc.constantFrom(
    '-proto',
    '--proto',
    '-proto=udp',
    'tcp',
    'udp',
    'sctp',
    '-host-ip',
    '-host-port',
    '-container-ip',
    '-container-port',
    '-use-listen-fd',
    '-use-listen-fd=false',
    '-v',
    '-h',
    '--',
    '-',
    '127.0.0.1',
    '::',
    '[::1]',
    '0x50',
    '080',
    '65536',
    '-1',
    '80',
    '=',
    '-=',
    '---x',
  ),
  fc.string({ maxLength: 12 }),
  fc.integer({ min: -70000, max: 70000 }).map(String),
);

function check(run: () => unknown): void {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(ProxyError);
    expect([1, 2]).toContain((e as ProxyError).exitCode);
    expect((e as Error).message).not.toMatch(/\n/);
    expect((e as Error).message.length).toBeGreaterThan(0);
  }
}

describe('docker-mode input properties', () => {
  it('any argv gives a mapping or a one-line error with exit 1 or 2', () => {
    fc.assert(
      fc.property(fc.array(token, { maxLength: 14 }), (argv) => {
        check(() => {
          const flags = parseDockerArgs(argv);
          if (flags.help) return;
          const m = toDockerMapping(flags);
          expect(m.hostPort).toBeGreaterThanOrEqual(0);
          expect(m.targetPort).toBeGreaterThanOrEqual(1);
        });
      }),
      { numRuns: 5000 },
    );
  });

  it('any USERLAND_PROXY_* environment gives settings or a one-line error with exit 1', () => {
    const names = [
      'LOG_LEVEL',
      'UDP_IDLE_TIMEOUT',
      'UDP_MAX_FLOWS',
      'CONNECT_TIMEOUT',
      'IDLE_TIMEOUT',
      'LINGER_TIMEOUT',
      'ALLOW',
      'DENY',
      'PROXY_PROTOCOL',
      'TEXTFILE_DIR',
    ].map((n) => `USERLAND_PROXY_${n}`);
    const value = fc.oneof(
      fc.string({ maxLength: 24 }),
      fc.constantFrom('0', '10s', '1e3', '-5', 'v2', '10.0.0.0/8', '::1/129', '/tmp', 'debug', '999999999h'),
    );
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom(...names), value), (env) => {
        check(() => readDockerEnv(env));
      }),
      { numRuns: 3000 },
    );
  });
});
