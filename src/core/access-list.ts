/**
 * Access control: allow and deny lists of CIDR ranges, checked against the client address before
 * anything is dialled. Node 20 accepts net.createServer({ blockList }) but does not enforce it,
 * so the forwarders check here themselves. A deny match always wins; with an allow list, only
 * matching clients pass.
 *
 * Families never mix: an IPv4 client (or an IPv4-mapped client of a dual-stack socket) is checked
 * against the IPv4 rules and the rules written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104` is
 * `10.0.0.0/8`); an IPv6 client against the other IPv6 rules only. So `::/0` or a bogon list
 * with `::/8` never touches IPv4 clients (Node's BlockList, used as is, would match them all).
 */
import { BlockList, isIP } from 'node:net';
import { ipv6ToBytes, mappedIpv4Of, parseIp } from './address.js';
import { ProxyError, type ErrorCode } from './errors.js';

/** Allow and deny lists as given (CIDR strings); structured-clone safe for workers. */
export interface AccessSpec {
  allow: string[];
  deny: string[];
}

/** Compiled rules, with the spec they came from (the native engine compiles its own). */
export interface AccessRules {
  allow: FamilyLists | null;
  deny: FamilyLists | null;
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

/** One rule in the family it applies to: mapped IPv6 rules become IPv4 ones (see the top). */
export interface Rule {
  family: 4 | 6;
  address: string;
  prefix: number;
}

/** The rule a CIDR string (already validated by parseCidrs) stands for. */
export function ruleOf(cidr: string): Rule {
  const [addr = '', prefixText] = cidr.split('/');
  if (isIP(addr) === 4) return { family: 4, address: addr, prefix: prefixText === undefined ? 32 : Number(prefixText) };
  const prefix = prefixText === undefined ? 128 : Number(prefixText);
  const v4 = mappedIpv4Of(ipv6ToBytes(addr));
  if (v4 !== null && prefix >= 96) return { family: 4, address: v4, prefix: prefix - 96 };
  return { family: 6, address: addr.split('%')[0] as string, prefix };
}

/** Both families' lists of one rule set (null: no rule of that family). */
interface FamilyLists {
  v4: BlockList | null;
  v6: BlockList | null;
}

function compile(cidrs: readonly string[]): FamilyLists | null {
  if (cidrs.length === 0) return null;
  const lists: FamilyLists = { v4: null, v6: null };
  for (const rule of cidrs.map(ruleOf)) {
    const key = rule.family === 4 ? 'v4' : 'v6';
    lists[key] ??= new BlockList();
    const list = lists[key];
    list.addSubnet(rule.address, rule.prefix, rule.family === 4 ? 'ipv4' : 'ipv6');
  }
  return lists;
}

/** Compiles a spec; null when it restricts nothing. */
export function compileAccess(spec: AccessSpec | undefined): AccessRules | null {
  if (!spec || (spec.allow.length === 0 && spec.deny.length === 0)) return null;
  return { allow: compile(spec.allow), deny: compile(spec.deny), spec };
}

/** True when the client address may connect. */
export function isAllowed(rules: AccessRules, address: string | undefined): boolean {
  if (address === undefined) return false;
  const ip = parseIp(address.split('%')[0] as string);
  if (ip === null) return false;
  const key = ip.family === 4 ? 'v4' : 'v6';
  const type = ip.family === 4 ? 'ipv4' : 'ipv6';
  if (rules.deny?.[key]?.check(ip.address, type)) return false;
  return rules.allow === null || rules.allow[key]?.check(ip.address, type) === true;
}
