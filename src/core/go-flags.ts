/**
 * A faithful subset of Go's standard `flag` package, because dockerd (and scripts written against
 * docker-proxy) speak it: `-name v`, `-name=v`, `--name v`, `--name=v`; boolean flags only as `-b` or
 * `-b=<bool>`; parsing stops at the first non-flag argument or at `--` (the rest is ignored);
 * integers use strconv.ParseInt(s, 0, 64) rules (0x hex, 0o/leading-0 octal, 0b binary, `_`
 * separators); the last occurrence of a flag wins. Messages are Go's, word for word.
 */
import { ProxyError } from './errors.js';

/** The kinds of value a flag can hold. */
export type FlagKind = 'string' | 'int' | 'bool';

/** One flag definition, as with flag.String / flag.Int / flag.Bool. */
export interface FlagSpec {
  name: string;
  kind: FlagKind;
  usage: string;
  default: string | number | boolean;
}

/** The outcome of a parse. */
export interface GoFlagResult {
  /** Every defined flag's value (its default when not given). */
  values: Map<string, string | number | boolean>;
  /** Names of the flags that appeared on the command line. */
  given: Set<string>;
  /** True when -h or -help was given (Go prints usage and exits 0). */
  help: boolean;
  /** Arguments after the first non-flag (ignored by docker-proxy). */
  rest: string[];
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** strconv.ParseInt(s, 0, 64), returning Go's error text ("parse error" / "value out of range"). */
export function parseGoInt(text: string): number {
  const m = /^([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)$/.exec(text);
  if (!m) throw new Error('parse error');
  const sign = m[1] ?? '';
  let digits = (m[2] ?? '').replace(/_/g, '');
  // A leading 0 followed by more digits is octal in Go; BigInt wants an explicit 0o prefix.
  if (/^0[0-7]+$/.test(digits)) digits = `0o${digits.slice(1)}`;
  let value = BigInt(digits);
  if (sign === '-') value = -value;
  if (value < INT64_MIN || value > INT64_MAX) throw new Error('value out of range');
  // Ports and counts never need more than 2^53; clamp the representation, keep the range check.
  return Number(value);
}

/** strconv.ParseBool. */
export function parseGoBool(text: string): boolean {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(text)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(text)) return false;
  throw new Error('parse error');
}

function fail(message: string): never {
  throw new ProxyError('UPROXY_ERR_BAD_FLAG', message);
}

/**
 * Parses argv (without the program name) against the flag set, exactly as Go's FlagSet.Parse.
 * Throws ProxyError UPROXY_ERR_BAD_FLAG with Go's message on the first error.
 */
export function parseGoFlags(argv: readonly string[], specs: readonly FlagSpec[]): GoFlagResult {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const values = new Map<string, string | number | boolean>(specs.map((s) => [s.name, s.default]));
  const given = new Set<string>();
  let help = false;
  let i = 0;
  while (i < argv.length) {
    const arg = argv[i] as string;
    if (arg.length < 2 || arg[0] !== '-') break;
    let minuses = 1;
    if (arg[1] === '-') {
      minuses = 2;
      if (arg.length === 2) {
        i++;
        break;
      }
    }
    let name = arg.slice(minuses);
    if (name.length === 0 || name[0] === '-' || name[0] === '=') fail(`bad flag syntax: ${arg}`);
    i++;
    let value = '';
    let hasValue = false;
    const eq = name.indexOf('=', 1);
    if (eq > 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
      hasValue = true;
    }
    const spec = byName.get(name);
    if (!spec) {
      if (name === 'h' || name === 'help') {
        help = true;
        break;
      }
      fail(`flag provided but not defined: -${name}`);
    }
    if (spec.kind === 'bool') {
      let b = true;
      if (hasValue) {
        try {
          b = parseGoBool(value);
        } catch (err) {
          fail(`invalid boolean value "${value}" for -${name}: ${(err as Error).message}`);
        }
      }
      values.set(name, b);
    } else {
      if (!hasValue && i < argv.length) {
        value = argv[i] as string;
        hasValue = true;
        i++;
      }
      if (!hasValue) fail(`flag needs an argument: -${name}`);
      if (spec.kind === 'int') {
        try {
          values.set(name, parseGoInt(value));
        } catch (err) {
          fail(`invalid value "${value}" for flag -${name}: ${(err as Error).message}`);
        }
      } else {
        values.set(name, value);
      }
    }
    given.add(name);
  }
  return { values, given, help, rest: argv.slice(i) };
}

/** Go's FlagSet.PrintDefaults layout, sorted by name. */
export function formatUsage(program: string, specs: readonly FlagSpec[]): string {
  const lines = [`Usage of ${program}:`];
  for (const s of [...specs].sort((a, b) => a.name.localeCompare(b.name))) {
    let head = `  -${s.name}`;
    if (s.kind !== 'bool') head += ` ${s.kind}`;
    let usage = s.usage;
    const isZero = s.default === '' || s.default === 0 || s.default === false;
    if (!isZero) usage += s.kind === 'string' ? ` (default "${s.default}")` : ` (default ${s.default})`;
    // Go puts a one-letter bool flag's usage on the same line after a tab.
    lines.push(head.length <= 4 && s.kind === 'bool' ? `${head}\t${usage}` : `${head}\n    \t${usage}`);
  }
  return `${lines.join('\n')}\n`;
}
