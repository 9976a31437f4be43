/** The shim protocol's engine side (src/shared-engine/engine-protocol.ts; native/shim.c is the other): the registration message, and the wire's words checked against the C ends'. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { control, parseRegistration, WIRE, wireMismatch } from '../../src/shared-engine/engine-protocol.js';
import { ROOT } from '../helpers/proxy.js';

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

describe('the shim wire checks itself (native/ctl-msg.h against WIRE)', () => {
  const addon = (() => {
    try {
      return createRequire(import.meta.url)(join(ROOT, 'build/Release/engine.node')) as { ctlContract?: unknown };
    } catch {
      return null;
    }
  })();
  it.runIf(addon)("the addon's ctlContract (the C ends' words) is WIRE, and control() accepts it", () => {
    expect(wireMismatch(addon?.ctlContract)).toBeNull();
    expect(typeof control()).toBe('object');
  });
  it('a letter or a variable that differs is reported, by name', () => {
    const changed = structuredClone(WIRE) as { messages: Record<string, string>; sharedEnv: string };
    changed.messages.move = 'N';
    expect(wireMismatch(changed)).toMatch(/^messages .*"move":"N".*expected .*"move":"M"/);
    expect(wireMismatch({ ...WIRE, sharedEnv: 'USERLAND_PROXY_SHARE' })).toBe('sharedEnv "USERLAND_PROXY_SHARE", expected "USERLAND_PROXY_SHARED"');
    expect(wireMismatch(undefined)).toMatch(/^protocol undefined/);
  });
  it('the launcher (sh) reads the same variable as the shim and the engine', () => {
    const launcher = readFileSync(join(ROOT, 'bin/userland-proxy'), 'utf8');
    expect(launcher).toContain(`\${${WIRE.sharedEnv}:-true}`);
  });
});
