import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, ProxyError, toProxyError } from '../../src/core/errors.js';

describe('errors catalog', () => {
  it('ProxyError carries its code, exit status and a one-line message', () => {
    const e = new ProxyError('UPROXY_ERR_BAD_FLAG', 'line one\nline two');
    expect(e.code).toBe('UPROXY_ERR_BAD_FLAG');
    expect(e.exitCode).toBe(2);
    expect(e.message).toBe('line one line two');
  });
  it('toProxyError() keeps ProxyErrors and wraps the rest as internal', () => {
    const e = new ProxyError('UPROXY_ERR_LISTEN', 'x');
    expect(toProxyError(e)).toBe(e);
    expect(toProxyError(new Error('boom'))).toMatchObject({ code: 'UPROXY_ERR_INTERNAL', exitCode: 1, message: 'internal error: boom' });
  });
  it('every code is documented in docs/reference.md with its exit status', () => {
    const readme = readFileSync(new URL('../../docs/reference.md', import.meta.url), 'utf8');
    for (const [code, exit] of Object.entries(ERROR_CODES)) {
      expect(readme, code).toMatch(new RegExp(`\\| \`${code}\` \\| ${exit} \\|`));
    }
  });
});
