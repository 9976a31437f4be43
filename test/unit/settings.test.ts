import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { flagOf, parseValue, propOf, readSettings, setting, SETTINGS, settingsOf } from '../../src/core/settings.js';

const readme = readFileSync(new URL('../../docs/reference.md', import.meta.url), 'utf8');

/** The rows of the first Markdown table after a heading, as cells. */
function table(heading: string): string[][] {
  const from = readme.indexOf(`\n${heading}\n`);
  expect(from, heading).toBeGreaterThan(0);
  const lines = readme.slice(from).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const l of lines.slice(start + 2)) {
    if (!l.startsWith('|')) break;
    rows.push(
      l
        .split(/(?<!\\)\|/)
        .slice(1, -1)
        .map((c) => c.trim()),
    );
  }
  return rows;
}

describe('the settings table', () => {
  it("docs/reference.md's docker-mode variables are exactly the docker settings (plus the launcher's), with their defaults", () => {
    const rows = table('### Environment variables');
    const names = rows.map((r) => /`USERLAND_PROXY_(\w+)`/.exec(r[0] ?? '')?.[1]);
    expect(new Set(names)).toEqual(new Set([...settingsOf('docker').map((s) => s.env), 'NODE', 'NODE_OPTIONS']));
    for (const s of settingsOf('docker')) {
      const row = rows.find((r) => r[0] === `\`USERLAND_PROXY_${s.env}\``) as string[];
      expect(row[2], s.env).toContain(s.shown);
    }
  });

  it("docs/reference.md's standalone options are exactly the standalone settings, with variable, key and default", () => {
    const rows = table('### Options, environment and config file');
    const flags = rows.map((r) => /^`(--[a-z-]+)/.exec(r[0] ?? '')?.[1]);
    expect(new Set(flags)).toEqual(new Set([...settingsOf('standalone').map(flagOf), '--config']));
    for (const s of settingsOf('standalone')) {
      const row = rows.find((r) => r[0]?.startsWith(`\`${flagOf(s)}`)) as string[];
      expect(row[1], s.key).toContain(`USERLAND_PROXY_${s.env}`);
      expect(row[2], s.key).toContain(`\`${s.key}\``);
      expect(row[4], s.key).toContain(s.shown);
    }
  });

  it('every bound is enforced with a message saying what is accepted', () => {
    const bad = (key: string, v: unknown) => () => parseValue(setting(key), v, 'UPROXY_ERR_CONFIG', 'X');
    expect(bad('udpMaxFlows', '0')).toThrow('must be an integer 1-1000000');
    expect(bad('maxBuffer', 1024)).toThrow('must be an integer 16384-268435456');
    expect(bad('udpIdleTimeout', '5ms')).toThrow('must be at least 10ms');
    expect(bad('drainTimeout', 1e7)).toThrow('too large (at most 2147483.647s)');
    expect(bad('drainTimeout', '25d')).toThrow('use a duration such as 500ms, 90s or 5m');
    expect(bad('httpReload', 'maybe')).toThrow('use true or false');
    expect(parseValue(setting('connectTimeout'), 2, 'UPROXY_ERR_CONFIG', 'X')).toBe(2000);
    for (const s of SETTINGS) expect(s.description.length, s.key).toBeGreaterThan(0);
  });

  it('readSettings() gives one property per row of the mode (durations in ms), defaults where nothing is read', () => {
    const docker = readSettings('docker', () => undefined);
    expect(Object.keys(docker).sort()).toEqual(settingsOf('docker').map(propOf).sort());
    expect(docker).toMatchObject({ idleTimeoutMs: 0, udpIdleTimeoutMs: 90_000, maxBuffer: 1_048_576, maxConnections: null, metrics: null });
    const standalone = readSettings('standalone', (s) => (s.key === 'drainTimeout' ? 5 : undefined));
    expect(Object.keys(standalone).sort()).toEqual(settingsOf('standalone').map(propOf).sort());
    expect(standalone.drainTimeoutMs).toBe(5);
    // A list default is copied: one caller's edit never reaches the table or another caller.
    standalone.allow.push('10.0.0.0/8');
    expect(readSettings('standalone', () => undefined).allow).toEqual([]);
  });
});
