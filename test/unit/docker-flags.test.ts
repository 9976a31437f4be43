import { describe, expect, it } from 'vitest';
import { parseDockerArgs, toDockerMapping } from '../../src/docker/docker-flags.js';
import { ProxyError } from '../../src/core/errors.js';

const base = ['-host-ip', '127.0.0.1', '-host-port', '8080', '-container-ip', '172.17.0.2', '-container-port', '80'];
const map = (args: string[]) => toDockerMapping(parseDockerArgs(args));
const fails = (args: string[]) => {
  try {
    map(args);
  } catch (e) {
    expect(e).toBeInstanceOf(ProxyError);
    return { code: (e as ProxyError).code, message: (e as ProxyError).message, exit: (e as ProxyError).exitCode };
  }
  throw new Error('expected failure');
};

describe('toDockerMapping()', () => {
  it('toDockerMapping() builds a TCP mapping by default', () => {
    expect(map(base)).toEqual({
      proto: 'tcp',
      host: { address: '127.0.0.1', family: 4 },
      hostPort: 8080,
      target: { address: '172.17.0.2', family: 4 },
      targetPort: 80,
      useListenFd: false,
    });
  });

  it('toDockerMapping() allows an IPv6 front to an IPv4 container and the reverse', () => {
    expect(map(['-host-ip', '::', ...base.slice(2)]).host).toEqual({ address: '::', family: 6 });
    expect(map([...base.slice(0, 4), '-container-ip', 'fd00::2', '-container-port', '80']).target.family).toBe(6);
  });

  it('toDockerMapping() treats an empty -host-ip as "::" like every Docker version', () => {
    expect(map(['-host-ip', '', ...base.slice(2)]).host).toEqual({ address: '::', family: 6 });
  });

  it("toDockerMapping() reads IPv4-mapped IPv6 as IPv4, as Go's To4() does", () => {
    expect(map(['-host-ip', '::ffff:127.0.0.1', ...base.slice(2)]).host).toEqual({ address: '127.0.0.1', family: 4 });
  });

  it('toDockerMapping() accepts udp and -use-listen-fd', () => {
    const m = map(['-proto', 'udp', ...base, '-use-listen-fd']);
    expect(m.proto).toBe('udp');
    expect(m.useListenFd).toBe(true);
  });

  it('toDockerMapping() rejects SCTP with a message that says why', () => {
    const f = fails(['-proto', 'sctp', ...base]);
    expect(f.code).toBe('UPROXY_ERR_UNSUPPORTED_PROTO');
    expect(f.message).toContain('Node.js has no SCTP sockets');
    expect(f.exit).toBe(1);
  });

  it('toDockerMapping() rejects unknown protocols, bad IPs, ports out of range and missing flags', () => {
    expect(fails(['-proto', 'TCP', ...base]).message).toBe('unsupported protocol TCP');
    expect(fails(['-host-ip', '300.1.1.1', ...base.slice(2)]).message).toBe('invalid value "300.1.1.1" for flag -host-ip: invalid IP address: 300.1.1.1');
    expect(fails([...base.slice(0, 4), '-container-ip', 'example.com', '-container-port', '80']).code).toBe('UPROXY_ERR_BAD_FLAG');
    expect(fails([...base.slice(0, 4), '-container-ip', '0.0.0.0', '-container-port', '80']).message).toContain('wildcard');
    expect(fails(['-host-ip', '127.0.0.1', '-host-port', '70000', ...base.slice(4)]).message).toBe('invalid -host-port 70000: must be 0-65535');
    expect(fails(['-host-ip', '127.0.0.1', '-host-port', '-1', ...base.slice(4)]).message).toBe('invalid -host-port -1: must be 0-65535');
    expect(fails([...base.slice(0, 6), '-container-port', '0']).message).toBe('invalid -container-port 0: must be 1-65535');
    expect(fails(base.slice(0, 6)).message).toBe('missing -container-port: dockerd always passes it');
    expect(fails(['-host-ip', '127.0.0.1', ...base.slice(4)]).message).toBe('missing -host-port: dockerd always passes it');
    expect(fails(base.slice(0, 4)).message).toBe('missing -container-ip: dockerd always passes it');
  });

  it('toDockerMapping() allows host port 0 (kernel-chosen)', () => {
    expect(map(['-host-ip', '127.0.0.1', '-host-port', '0', ...base.slice(4)]).hostPort).toBe(0);
  });
});
