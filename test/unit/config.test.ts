import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildConfig, readConfigFile } from '../../src/standalone/config.js';
import { type ListenAddress, parseSetting, setting } from '../../src/core/settings.js';

/** The metrics listener's address as the config parses it. */
const parseListenAddress = (where: string, v: unknown) => parseSetting(setting('metrics'), v, 'UPROXY_ERR_CONFIG', where) as ListenAddress;
import { ProxyError } from '../../src/core/errors.js';

describe('buildConfig()', () => {
  it('buildConfig() combines publish specs from all sources and applies defaults', () => {
    const c = buildConfig(
      { publish: ['8080:10.0.0.2:80'] },
      { USERLAND_PROXY_PUBLISH: '9090:10.0.0.2:90, 5353:10.0.0.2:53/udp' },
      { publish: ['127.0.0.1:7070:10.0.0.2:70'] },
    );
    expect(c.mappings.map((m) => m.id)).toEqual(['tcp/0.0.0.0:8080', 'tcp/0.0.0.0:9090', 'udp/0.0.0.0:5353', 'tcp/127.0.0.1:7070']);
    expect(c).toMatchObject({
      metrics: null,
      drainTimeoutMs: 10_000,
      udpIdleTimeoutMs: 90_000,
      udpMaxFlows: 16_384,
      logLevel: 'info',
      logFile: undefined,
      connectTimeoutMs: 30_000,
      idleTimeoutMs: 0,
      lingerTimeoutMs: 600_000,
      maxConnections: null,
    });
    expect(
      buildConfig({ publish: ['8080:10.0.0.2:80'], maxConnections: '100', idleTimeout: '5m' }, { USERLAND_PROXY_LINGER_TIMEOUT: '0' }, { connectTimeout: 2 }),
    ).toMatchObject({ maxConnections: 100, idleTimeoutMs: 300_000, lingerTimeoutMs: 0, connectTimeoutMs: 2000 });
    expect(() => buildConfig({ publish: ['8080:10.0.0.2:80'], maxConnections: '0' }, {})).toThrow(
      'invalid --max-connections "0": must be an integer 1-10000000',
    );
  });

  it('buildConfig() gives the command line precedence over the environment over the file', () => {
    const c = buildConfig(
      { publish: ['8080:10.0.0.2:80'], drainTimeout: '1s' },
      { USERLAND_PROXY_DRAIN_TIMEOUT: '2s', USERLAND_PROXY_METRICS: '9464' },
      { drainTimeout: '3s', metrics: '0.0.0.0:1', udpIdleTimeout: 30, udpMaxFlows: 7, logLevel: 'debug' },
    );
    expect(c).toMatchObject({
      drainTimeoutMs: 1000,
      metrics: { host: { address: '127.0.0.1' }, port: 9464 },
      udpIdleTimeoutMs: 30_000,
      udpMaxFlows: 7,
      logLevel: 'debug',
    });
  });

  it('buildConfig() rejects unknown keys and variables, bad values and overlaps, naming them', () => {
    const f = (cli: object, env: object, file?: object) => () => buildConfig(cli, env as NodeJS.ProcessEnv, file as Record<string, unknown>);
    const p = { publish: ['8080:10.0.0.2:80'] };
    expect(f({}, {})).toThrow('no mappings');
    expect(f(p, {}, { publsh: [] })).toThrow('unknown key "publsh" in config file');
    // Audit L8: prototype names are no settings.
    for (const key of ['constructor', 'toString', '__proto__']) expect(f(p, {}, JSON.parse(`{"${key}": 1}`))).toThrow(`unknown key "${key}"`);
    // Audit L8: one IPv6 address in two spellings is one binding, labelled canonically.
    expect(f({ publish: ['[::1]:5:10.0.0.2:80', '[0:0::1]:5:10.0.0.2:80'] }, {})).toThrow('duplicate binding');
    expect(buildConfig({ publish: ['[0:0::1]:5:10.0.0.2:80'] }, {}).mappings[0]?.id).toBe('tcp/[::1]:5');
    // Audit L1: a JSON-number duration is bounded like the text form.
    expect(f(p, {}, { connectTimeout: 3_000_000 })).toThrow('invalid config key "connectTimeout" 3000000: too large (at most 2147483.647s)');
    expect(f(p, {}, { drainTimeout: 1e7 })).toThrow('too large');
    expect(buildConfig(p, {}, { drainTimeout: 2147483 }).drainTimeoutMs).toBe(2_147_483_000);
    // Reload over HTTP can be turned off (audit M5).
    expect(buildConfig(p, {}, {}).httpReload).toBe(true);
    expect(buildConfig(p, { USERLAND_PROXY_HTTP_RELOAD: 'false' }).httpReload).toBe(false);
    expect(f(p, {}, { httpReload: 'maybe' })).toThrow('invalid config key "httpReload" "maybe": use true or false');
    expect(f(p, { USERLAND_PROXY_PUBLSH: 'x' })).toThrow('unknown environment variable USERLAND_PROXY_PUBLSH');
    expect(f(p, {}, { publish: '8080:10.0.0.2:80' })).toThrow('config key "publish" must be an array');
    expect(f({ ...p, drainTimeout: 'soon' }, {})).toThrow('invalid --drain-timeout "soon": use a duration such as 500ms, 90s or 5m');
    expect(f(p, { USERLAND_PROXY_UDP_MAX_FLOWS: '0' })).toThrow('invalid USERLAND_PROXY_UDP_MAX_FLOWS "0": must be an integer 1-1000000');
    expect(f(p, {}, { logLevel: 'loud' })).toThrow('invalid config key "logLevel" "loud"');
    expect(f(p, {}, { metrics: 'localhost:9464' })).toThrow('"localhost" is not an IP address');
    expect(f({ publish: ['8080:10.0.0.2:80', '8080:10.0.0.3:80'] }, {})).toThrow('duplicate binding');
  });

  it('buildConfig() never throws anything but a one-line config error, whatever the file holds', () => {
    fc.assert(
      fc.property(
        fc.dictionary(
          fc.constantFrom(
            'publish',
            'metrics',
            'drainTimeout',
            'udpIdleTimeout',
            'udpMaxFlows',
            'connectTimeout',
            'idleTimeout',
            'lingerTimeout',
            'maxConnections',
            'logLevel',
            'logFile',
            'other',
          ),
          fc.jsonValue(),
        ),
        (file) => {
          try {
            buildConfig({ publish: ['8080:10.0.0.2:80'] }, {}, file);
          } catch (e) {
            expect(e).toBeInstanceOf(ProxyError);
            expect((e as ProxyError).exitCode).toBe(2);
            expect((e as Error).message).not.toContain('\n');
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('buildConfig() access lists', () => {
  it('buildConfig() applies global lists and per-mapping ones from config objects', () => {
    const c = buildConfig(
      { publish: ['8080:10.0.0.2:80'], deny: ['10.9.0.0/16'] },
      { USERLAND_PROXY_ALLOW: '127.0.0.0/8' },
      {
        publish: [{ spec: '9090:10.0.0.2:90', allow: ['192.0.2.0/24'], deny: ['192.0.2.9'] }],
      },
    );
    expect(c.mappings[0]?.access).toEqual({ allow: ['127.0.0.0/8'], deny: ['10.9.0.0/16'] });
    expect(c.mappings[1]?.access).toEqual({ allow: ['192.0.2.0/24'], deny: ['10.9.0.0/16', '192.0.2.9'] });
    expect(() => buildConfig({}, {}, { publish: [{ spec: '1:10.0.0.2:1', alow: [] }] })).toThrow('unknown key "alow" in config "publish"[0]');
    expect(() => buildConfig({}, {}, { publish: [{ allow: [] }] })).toThrow('config "publish"[0] needs "spec"');
    expect(() => buildConfig({ publish: ['1:10.0.0.2:1'], allow: ['nope'] }, {})).toThrow('invalid --allow entry "nope"');
  });

  it('buildConfig() applies the PROXY protocol to TCP mappings, globally or per mapping', () => {
    const c = buildConfig(
      { publish: ['8080:10.0.0.2:80', '5353:10.0.0.2:53/udp'], proxyProtocol: 'v2' },
      {},
      { publish: [{ spec: '9090:10.0.0.2:90', proxyProtocol: 'v1' }] },
    );
    expect(c.mappings.map((m) => m.proxyProtocol)).toEqual(['v2', 'off', 'v1']);
    expect(() => buildConfig({}, {}, { publish: [{ spec: '53:10.0.0.2:53/udp', proxyProtocol: 'v2' }] })).toThrow(
      'the PROXY protocol is supported on TCP mappings only',
    );
    expect(() => buildConfig({ publish: ['1:10.0.0.2:1'] }, { USERLAND_PROXY_PROXY_PROTOCOL: 'yes' })).toThrow(
      'invalid USERLAND_PROXY_PROXY_PROTOCOL "yes": use off, v1 or v2',
    );
  });
});

describe('buildConfig() property: environment variables', () => {
  it('never throws anything but a one-line config error, whatever USERLAND_PROXY_* holds', () => {
    const names = ['PUBLISH', 'METRICS', 'DRAIN_TIMEOUT', 'UDP_IDLE_TIMEOUT', 'UDP_MAX_FLOWS', 'LOG_LEVEL', 'LOG_FILE', 'BOGUS'].map(
      (n) => `USERLAND_PROXY_${n}`,
    );
    const value = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.constantFrom('8080:10.0.0.2:80', '1-2:10.0.0.2:3-4/udp', '10s', '0', '-1', '1e9', 'debug', '[::1]:9', ',,'),
    );
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom(...names), value), (env) => {
        try {
          const c = buildConfig({}, env);
          expect(c.mappings.length).toBeGreaterThan(0);
        } catch (e) {
          expect(e).toBeInstanceOf(ProxyError);
          expect((e as Error).message).not.toContain('\n');
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('readConfigFile() and the metrics address', () => {
  it('readConfigFile() reports missing files and bad JSON on one line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'upt-cfg-'));
    try {
      expect(() => readConfigFile(join(dir, 'none.json'))).toThrow(`cannot read config file ${join(dir, 'none.json')}: ENOENT`);
      writeFileSync(join(dir, 'bad.json'), '{ "publish": [ }');
      expect(() => readConfigFile(join(dir, 'bad.json'))).toThrow('is not valid JSON');
      writeFileSync(join(dir, 'arr.json'), '[]');
      expect(() => readConfigFile(join(dir, 'arr.json'))).toThrow('must hold a JSON object');
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
  it('parseListenAddress() accepts HOST:PORT, [V6]:PORT and PORT', () => {
    expect(parseListenAddress('x', '0.0.0.0:9464')).toEqual({ host: { address: '0.0.0.0', family: 4 }, port: 9464 });
    expect(parseListenAddress('x', '[::1]:9464')).toEqual({ host: { address: '::1', family: 6 }, port: 9464 });
    expect(parseListenAddress('x', '9464').host.address).toBe('127.0.0.1');
    expect(() => parseListenAddress('x', '::1:9464')).toThrow('use HOST:PORT');
  });
});
