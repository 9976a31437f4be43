/**
 * Smoke test of the benchmark harness (the suite itself is not part of npm test): one quick
 * scenario through the real harness, so that it cannot silently rot. Asserts only that every
 * contender produced a measurement and the reports were written, never timings.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { IS_ROOT } from '../helpers/netns.js';
import { ROOT, haveReference } from '../helpers/proxy.js';

const run = promisify(execFile);
const CAN = IS_ROOT && existsSync('/usr/bin/iperf3') && haveReference();
const out = mkdtempSync(join(tmpdir(), 'upt-bench-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe.skipIf(!CAN)('bench harness smoke test', () => {
  it('bench/run.mjs --quick runs bulk1 for direct, docker-proxy and both our engines and writes JSON, Markdown and SVG', async () => {
    await run(
      process.execPath,
      [
        join(ROOT, 'bench/run.mjs'),
        '--quick',
        '--scenarios',
        'bulk1',
        '--contenders',
        'direct,docker-proxy,userland-proxy js,userland-proxy native',
        '--out',
        out,
      ],
      { timeout: 120_000 },
    );
    const report = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as { results: Record<string, Record<string, { gbps: number }[]>> };
    for (const n of ['direct', 'docker-proxy', 'userland-proxy js', 'userland-proxy native']) {
      expect(report.results.bulk1?.[n]?.[0]?.gbps, n).toBeGreaterThan(0);
    }
    expect(readFileSync(join(out, 'latest.md'), 'utf8')).toContain('| bulk TCP, 1 stream, Gbit/s (higher is better) |');
    const svg = readFileSync(join(out, 'ratios.svg'), 'utf8');
    expect(svg).toMatch(/^<svg [^>]*>/);
    expect(svg.replace(/<[^>]*>/g, '')).not.toMatch(/[<>]/); // text is escaped: well-formed XML
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toMatch(/^upb/m); // the harness removed its namespace
  }, 150_000);
});
