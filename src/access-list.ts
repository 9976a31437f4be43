/**
 * Access control: allow and deny lists of CIDR ranges, checked against the client address before
 * anything is dialled. Node 20 accepts net.createServer({ blockList }) but does not enforce it,
 * so the forwarders check here themselves. A deny match always wins; with an allow list, only
 * matching clients pass.
 */
import { BlockList, isIP } from 'node:net';
import { ProxyError, type ErrorCode } from './errors.js';

/** Allow and deny lists as given (CIDR strings); structured-clone safe for workers. */
export interface AccessSpec {
  allow: string[];
  deny: string[];
}

/** Compiled rules, with the spec they came from (the native engine compiles its own). */
export interface AccessRules {
  allow: BlockList | null;
  deny: BlockList | null;
  spec: AccessSpec;
}

/**
 * Parses one list: CIDRs or single addresses, separated by commas or spaces (or an array).
 * Throws a one-line error naming the bad entry and where it came from.
 */
export function parseCidrs(value: unknown, source: string, code: ErrorCode): string[] {
  const items = Array.isArray(value) ? value : typeof value === 'string' ? value.split(/[\s,]+/).filter((x) => x !== '') : null;
  if (items === null) throw new ProxyError(code, `invalid ${source}: must be a list of CIDR ranges such as 10.0.0.0/8, ::1/128`);
  for (const item of items) {
    if (typeof item !== 'string') throw new ProxyError(code, `invalid ${source} entry ${JSON.stringify(item)}: not a CIDR range`);
    const [addr = '', prefix, extra] = item.split('/');
    const family = isIP(addr);
    const max = family === 6 ? 128 : 32;
    const ok = family !== 0 && extra === undefined && (prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= max));
    if (!ok) throw new ProxyError(code, `invalid ${source} entry "${item}": not a CIDR range (e.g. 10.0.0.0/8, fd00::/8, 192.0.2.7)`);
  }
  return items as string[];
}

function compile(cidrs: readonly string[]): BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new BlockList();
  for (const c of cidrs) {
    const [addr = '', prefix] = c.split('/');
    const type = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    list.addSubnet(addr, prefix === undefined ? (type === 'ipv6' ? 128 : 32) : Number(prefix), type);
  }
  return list;
}

/** Compiles a spec; null when it restricts nothing. */
export function compileAccess(spec: AccessSpec | undefined): AccessRules | null {
  if (!spec || (spec.allow.length === 0 && spec.deny.length === 0)) return null;
  return { allow: compile(spec.allow), deny: compile(spec.deny), spec };
}

/** True when the client address may connect. */
export function isAllowed(rules: AccessRules, address: string | undefined): boolean {
  if (address === undefined) return false;
  const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
  if (rules.deny?.check(address, type)) return false;
  return rules.allow === null || rules.allow.check(address, type);
}
