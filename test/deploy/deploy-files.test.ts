/**
 * deploy/ files validated against what the code exports: every metric a dashboard panel or an
 * alert rule uses exists (histograms through their _bucket/_sum/_count series), the dashboard has
 * its `mapping` variable and every panel filters on it. promtool checks live in
 * test/deploy/deploy-tools.test.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FAMILIES, PREFIX } from '../../src/metrics/metrics.js';

const exported = new Set(
  FAMILIES.flatMap((f) =>
    f.type === 'histogram' ? [`${PREFIX}${f.name}_bucket`, `${PREFIX}${f.name}_sum`, `${PREFIX}${f.name}_count`] : [`${PREFIX}${f.name}`],
  ),
);
const used = (text: string): string[] => [...new Set(text.match(/userland_proxy_[a-z_]+/g) ?? [])];

describe('deploy/grafana/dashboard.json', () => {
  const dash = JSON.parse(readFileSync(new URL('../../deploy/grafana/dashboard.json', import.meta.url), 'utf8')) as {
    templating: { list: { name: string; query: string }[] };
    panels: { title: string; targets: { expr: string }[] }[];
    __inputs: { name: string }[];
  };
  it('uses only metrics the code exports', () => {
    const names = dash.panels.flatMap((p) => p.targets.flatMap((t) => used(t.expr)));
    expect(names.length).toBeGreaterThan(8);
    for (const n of names) expect(exported, n).toContain(n);
  });
  it('has a mapping variable and every panel filters on it; the datasource is an input', () => {
    expect(dash.templating.list.find((v) => v.name === 'mapping')?.query).toBe('label_values(userland_proxy_mapping_up, mapping)');
    for (const p of dash.panels) for (const t of p.targets) expect(t.expr, p.title).toContain('mapping=~"$mapping"');
    expect(dash.__inputs.map((i) => i.name)).toEqual(['DS_PROMETHEUS']);
    const titles = dash.panels.map((p) => p.title.toLowerCase()).join(' | ');
    for (const topic of ['connections', 'bytes', 'errors', 'latency', 'udp flows']) expect(titles).toContain(topic);
  });
});

describe('deploy/prometheus/alerts.yml', () => {
  it('uses only metrics the code exports', () => {
    const names = used(readFileSync(new URL('../../deploy/prometheus/alerts.yml', import.meta.url), 'utf8'));
    expect(names.length).toBeGreaterThanOrEqual(5);
    for (const n of names) expect(exported, n).toContain(n);
  });
});

describe('deploy/', () => {
  it('every file is exercised by some test (named there by path or file name): no untested sample', () => {
    const root = join(import.meta.dirname, '../..');
    const files = (readdirSync(join(root, 'deploy'), { recursive: true, withFileTypes: true }) as import('node:fs').Dirent[])
      .filter((e) => e.isFile())
      .map((e) => join(e.parentPath, e.name).slice(root.length + 1));
    const tests = (readdirSync(join(root, 'test'), { recursive: true }) as string[])
      .filter((f) => f.endsWith('.ts'))
      .map((f) => readFileSync(join(root, 'test', f), 'utf8'))
      .join('\n');
    expect(files.length).toBeGreaterThanOrEqual(12);
    for (const f of files) expect(tests.includes(f) || tests.includes(`'${basename(f)}'`) || tests.includes(`/${basename(f)}`), f).toBe(true);
  });
});
