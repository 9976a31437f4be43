import { describe, expect, it } from 'vitest';
import { readDockerEnv } from '../../src/docker/docker-env.js';

/** docker-proxy's behaviour where nothing is set. */
const DEFAULTS = {
  logFile: undefined,
  logLevel: 'info',
  udpIdleTimeoutMs: 90_000,
  udpMaxFlows: 16_384,
  textfileDir: undefined,
  connectTimeoutMs: 30_000,
  idleTimeoutMs: 0,
  lingerTimeoutMs: 600_000,
  allow: [],
  deny: [],
  proxyProtocol: 'off',
  maxConnections: null,
  maxBuffer: 1_048_576,
  engine: 'auto',
  metrics: null,
  shared: true,
  sharedIdleTimeoutMs: 30_000,
  sharedDrainTimeoutMs: 600_000,
};

describe('readDockerEnv()', () => {
  it("readDockerEnv() has docker-proxy's defaults", () => {
    expect(readDockerEnv({})).toEqual(DEFAULTS);
  });
  it('readDockerEnv() reads every variable', () => {
    expect(
      readDockerEnv({
        USERLAND_PROXY_LOG_FILE: '/tmp/x.log',
        USERLAND_PROXY_LOG_LEVEL: 'debug',
        USERLAND_PROXY_UDP_IDLE_TIMEOUT: '500ms',
        USERLAND_PROXY_UDP_MAX_FLOWS: '10',
        USERLAND_PROXY_ENGINE: 'js',
      }),
    ).toEqual({ ...DEFAULTS, logFile: '/tmp/x.log', logLevel: 'debug', udpIdleTimeoutMs: 500, udpMaxFlows: 10, engine: 'js' });
  });
  it('readDockerEnv() rejects bad values with a one-line message naming variable and value', () => {
    expect(() => readDockerEnv({ USERLAND_PROXY_LOG_LEVEL: 'loud' })).toThrow('invalid USERLAND_PROXY_LOG_LEVEL "loud"');
    expect(() => readDockerEnv({ USERLAND_PROXY_UDP_IDLE_TIMEOUT: 'soon' })).toThrow('invalid USERLAND_PROXY_UDP_IDLE_TIMEOUT "soon"');
    expect(() => readDockerEnv({ USERLAND_PROXY_UDP_IDLE_TIMEOUT: '1ms' })).toThrow('at least 10ms');
    expect(() => readDockerEnv({ USERLAND_PROXY_UDP_MAX_FLOWS: '0' })).toThrow('invalid USERLAND_PROXY_UDP_MAX_FLOWS "0"');
    expect(() => readDockerEnv({ USERLAND_PROXY_UDP_MAX_FLOWS: '1e3' })).toThrow('integer');
    expect(() => readDockerEnv({ USERLAND_PROXY_CONNECT_TIMEOUT: 'never' })).toThrow('invalid USERLAND_PROXY_CONNECT_TIMEOUT "never"');
    expect(() => readDockerEnv({ USERLAND_PROXY_TEXTFILE_DIR: '/nonexistent/dir' })).toThrow(
      'invalid USERLAND_PROXY_TEXTFILE_DIR "/nonexistent/dir": not a writable directory (ENOENT)',
    );
  });
  it('readDockerEnv() reads the TCP timeouts; 0 turns one off', () => {
    expect(readDockerEnv({ USERLAND_PROXY_CONNECT_TIMEOUT: '5s', USERLAND_PROXY_IDLE_TIMEOUT: '1h', USERLAND_PROXY_LINGER_TIMEOUT: '0' })).toMatchObject({
      connectTimeoutMs: 5000,
      idleTimeoutMs: 3_600_000,
      lingerTimeoutMs: 0,
    });
  });
});
