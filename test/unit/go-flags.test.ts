import { describe, expect, it } from 'vitest';
import { formatUsage, parseGoBool, parseGoFlags, parseGoInt, type FlagSpec } from '../../src/core/go-flags.js';
import { DOCKER_FLAGS } from '../../src/docker/docker-flags.js';

const specs: FlagSpec[] = [...DOCKER_FLAGS];
const parse = (argv: string[]) => parseGoFlags(argv, specs);
const err = (argv: string[]) => {
  try {
    parse(argv);
  } catch (e) {
    return { message: (e as Error).message, exit: (e as { exitCode: number }).exitCode };
  }
  throw new Error('expected an error');
};

describe('parseGoFlags() (Go flag package semantics, contract section 2)', () => {
  it('parseGoFlags() accepts -name v, -name=v, --name v and --name=v', () => {
    const r = parse(['-proto', 'udp', '-host-ip=127.0.0.1', '--host-port', '80', '--container-port=81']);
    expect(r.values.get('proto')).toBe('udp');
    expect(r.values.get('host-ip')).toBe('127.0.0.1');
    expect(r.values.get('host-port')).toBe(80);
    expect(r.values.get('container-port')).toBe(81);
    expect([...r.given].sort()).toEqual(['container-port', 'host-ip', 'host-port', 'proto']);
  });

  it("parseGoFlags() parses dockerd's exact argv, with -use-listen-fd last", () => {
    const r = parse(['-proto', 'tcp', '-host-ip', '::', '-host-port', '8080', '-container-ip', '172.17.0.2', '-container-port', '80', '-use-listen-fd']);
    expect(r.values.get('host-ip')).toBe('::');
    expect(r.values.get('use-listen-fd')).toBe(true);
    expect(r.rest).toEqual([]);
  });

  it('parseGoFlags() treats bool flags as -b or -b=value only; -b false stops at "false"', () => {
    expect(parse(['-use-listen-fd=false']).values.get('use-listen-fd')).toBe(false);
    expect(parse(['-use-listen-fd=T']).values.get('use-listen-fd')).toBe(true);
    const r = parse(['-use-listen-fd', 'false', '-proto', 'udp']);
    expect(r.values.get('use-listen-fd')).toBe(true);
    expect(r.values.get('proto')).toBe('tcp');
    expect(r.rest).toEqual(['false', '-proto', 'udp']);
    expect(err(['-use-listen-fd=maybe']).message).toBe('invalid boolean value "maybe" for -use-listen-fd: parse error');
  });

  it('parseGoFlags() stops at the first non-flag, at "-" and after "--"; the rest is ignored', () => {
    expect(parse(['-proto', 'udp', 'extra', '-host-port', 'x']).rest).toEqual(['extra', '-host-port', 'x']);
    expect(parse(['--', '-proto', 'udp']).values.get('proto')).toBe('tcp');
    expect(parse(['-', '-proto', 'udp']).rest).toEqual(['-', '-proto', 'udp']);
  });

  it('parseGoFlags() lets the last occurrence win', () => {
    expect(parse(['-host-port', '1', '-host-port', '2']).values.get('host-port')).toBe(2);
  });

  it("parseGoFlags() reports unknown flags, missing values and bad syntax with Go's words, exit 2", () => {
    expect(err(['-bogus'])).toEqual({ message: 'flag provided but not defined: -bogus', exit: 2 });
    expect(err(['-host-port'])).toEqual({ message: 'flag needs an argument: -host-port', exit: 2 });
    expect(err(['---proto', 'tcp']).message).toBe('bad flag syntax: ---proto');
    expect(err(['-=x']).message).toBe('bad flag syntax: -=x');
    expect(err(['-host-port', 'abc']).message).toBe('invalid value "abc" for flag -host-port: parse error');
    expect(err(['-host-port', '080']).message).toBe('invalid value "080" for flag -host-port: parse error');
    expect(err(['-host-port', '9223372036854775808']).message).toBe('invalid value "9223372036854775808" for flag -host-port: value out of range');
    expect(err(['-v=2']).message).toBe('invalid boolean value "2" for -v: parse error');
  });

  it('parseGoFlags() recognises -h and -help without defining them', () => {
    expect(parse(['-h']).help).toBe(true);
    expect(parse(['--help', '-bogus']).help).toBe(true);
  });
});

describe('parseGoInt() (strconv.ParseInt base 0)', () => {
  it('parseGoInt() reads decimal, hex, octal, binary, signs and underscores', () => {
    expect(parseGoInt('80')).toBe(80);
    expect(parseGoInt('0x50')).toBe(80);
    expect(parseGoInt('0X50')).toBe(80);
    expect(parseGoInt('0120')).toBe(80);
    expect(parseGoInt('0o120')).toBe(80);
    expect(parseGoInt('0b1010000')).toBe(80);
    expect(parseGoInt('-1')).toBe(-1);
    expect(parseGoInt('+8_0')).toBe(80);
    expect(parseGoInt('0')).toBe(0);
  });

  it('parseGoInt() rejects what Go rejects', () => {
    for (const bad of ['', ' 80', '80 ', '8_', '_8', '0x', '0x_', '08', '1e3', '80.0', '0b2', '--1']) {
      expect(() => parseGoInt(bad), bad).toThrow('parse error');
    }
  });
});

describe('parseGoBool()', () => {
  it("parseGoBool() accepts exactly strconv.ParseBool's spellings", () => {
    for (const t of ['1', 't', 'T', 'TRUE', 'true', 'True']) expect(parseGoBool(t)).toBe(true);
    for (const f of ['0', 'f', 'F', 'FALSE', 'false', 'False']) expect(parseGoBool(f)).toBe(false);
    for (const x of ['yes', 'tRUE', '', 'on']) expect(() => parseGoBool(x)).toThrow('parse error');
  });
});

describe('formatUsage()', () => {
  it("formatUsage() lists every flag sorted, with Go's defaults notation", () => {
    const u = formatUsage('userland-proxy', specs);
    expect(u.split('\n')[0]).toBe('Usage of userland-proxy:');
    expect(u).toContain('  -host-port int\n    \thost port (default -1)');
    expect(u).toContain('  -proto string\n    \tproxy protocol (default "tcp")');
    expect(u).toContain('  -v\tshow version information');
    expect(u.indexOf('-container-ip')).toBeLessThan(u.indexOf('-use-listen-fd'));
  });
});
