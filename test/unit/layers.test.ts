/**
 * The floors of src/ (docs/layout.md): each folder imports only from the folders below it, and
 * no module imports itself back through others. A new folder must be placed here first.
 *
 *   core           settings, errors, addresses, logging: no other folder
 *   data-path      forwarding on node:net/dgram or the native addon
 *   metrics        what Prometheus and `ls` read of a mapping
 *   docker         the docker-proxy process contract        standalone   the config-file daemon
 *   shared-engine  every shim's mapping in one process (it runs docker's per-mapping code)
 * src/paths.ts (every import.meta.url anchor) imports nothing and anyone may import it; src/cli.ts
 * may import anything and nothing imports it.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/proxy.js';

const SRC = join(ROOT, 'src');
/** Which folders a folder's modules may import, its own included. */
const MAY_IMPORT: Record<string, readonly string[]> = {
  core: ['core'],
  'data-path': ['core', 'data-path'],
  metrics: ['core', 'data-path', 'metrics'],
  docker: ['core', 'data-path', 'metrics', 'docker'],
  standalone: ['core', 'data-path', 'metrics', 'standalone'],
  'shared-engine': ['core', 'data-path', 'metrics', 'docker', 'shared-engine'],
};

/** Every module of src/ (paths relative to it) with the modules it imports, statically or not. */
function importGraph(): Map<string, string[]> {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.endsWith('.ts')) files.push(relative(SRC, p));
    }
  };
  walk(SRC);
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const text = readFileSync(join(SRC, f), 'utf8');
    const deps = [...text.matchAll(/(?:from\s+|import\()'(\.{1,2}\/[^']+)\.js'/g)].map((m) => relative(SRC, resolve(join(SRC, dirname(f)), `${m[1]}.ts`)));
    graph.set(f, deps);
  }
  return graph;
}

const folderOf = (file: string): string => (file.includes('/') ? file.slice(0, file.indexOf('/')) : '');

/** Each import that goes the wrong way, and each cycle, as one line. */
function violations(graph: Map<string, string[]>): string[] {
  const out: string[] = [];
  for (const [file, deps] of graph) {
    const from = folderOf(file);
    if (from !== '' && !(from in MAY_IMPORT)) out.push(`${file}: folder ${from} has no floor in MAY_IMPORT`);
    for (const dep of deps) {
      if (!graph.has(dep)) out.push(`${file} imports ${dep}, which does not exist`);
      else if (dep === 'cli.ts') out.push(`${file} imports cli.ts, the entry`);
      else if (file === 'paths.ts') out.push(`paths.ts imports ${dep}: it must import nothing`);
      else if (from !== '' && folderOf(dep) !== '' && !MAY_IMPORT[from]?.includes(folderOf(dep)))
        out.push(`${file} imports ${dep}: ${from} may not import ${folderOf(dep)}`);
    }
  }
  // Cycles: a depth-first walk; a module met again while still on the path closes one.
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 'open');
    path.push(f);
    for (const d of graph.get(f) ?? []) {
      if (state.get(d) === 'open') out.push(`cycle: ${[...path.slice(path.indexOf(d)), d].join(' -> ')}`);
      else if (!state.has(d) && graph.has(d)) visit(d);
    }
    path.pop();
    state.set(f, 'done');
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return out;
}

describe('the layers of src/', () => {
  it('every import goes down or sideways within a folder, and there is no cycle', () => {
    expect(violations(importGraph())).toEqual([]);
  });

  it('the check finds a wrong-way import and a cycle (so the test above can fail)', () => {
    const graph = importGraph();
    const core = [...graph.keys()].find((f) => f.startsWith('core/')) as string;
    const docker = [...graph.keys()].find((f) => f.startsWith('docker/')) as string;
    const wrong = new Map(graph);
    wrong.set(core, [...(graph.get(core) ?? []), docker]);
    expect(violations(wrong)).toContain(`${core} imports ${docker}: core may not import docker`);
    const circle = new Map(graph);
    const [a, b] = [...graph.keys()].filter((f) => f.startsWith('data-path/'));
    circle.set(a as string, [b as string]);
    circle.set(b as string, [a as string]);
    expect(violations(circle).some((v) => v.startsWith('cycle:'))).toBe(true);
  });

  it('the README stays the entry it is meant to be: 450 lines at most (the rest is in docs/)', () => {
    expect(readFileSync(join(ROOT, 'README.md'), 'utf8').trimEnd().split('\n').length).toBeLessThanOrEqual(450);
  });

  it('docs/layout.md names every file of src/ and native/', () => {
    const layout = readFileSync(join(ROOT, 'docs/layout.md'), 'utf8');
    const native = readdirSync(join(ROOT, 'native')).filter((f) => /\.(c|h|mjs)$/.test(f));
    const missing = [...importGraph().keys(), ...native.map((f) => `native/${f}`)].filter((f) => !layout.includes(f.slice(f.lastIndexOf('/') + 1)));
    expect(missing).toEqual([]);
  });
});
