import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * One project per engine: every suite runs on the JavaScript engine, and every integration
 * suite (test/integration: the data path) runs again on the native one, except those about the
 * JavaScript relay's own internals (`native` is forced, so a missing addon fails CI instead of
 * silently testing JavaScript twice). Unit suites (test/unit, a project of their own without
 * per-file isolation) and deploy suites (test/deploy) run once. groupOrder runs the native
 * project after the others: the same suite in both at once would fight over dockerd and fixed
 * resources. Integration suites spawn real processes and namespaces, and mostly wait on them:
 * with two files at a time the 2 cores were 48 % busy (a Node 22 run); three kept them 77 % busy
 * and ended the Node 20 run in 424 s instead of 505 s.
 */
/** Integration suites that run once: the JavaScript relay's internals, and the bench harness (it runs both engines itself). */
const ONCE = ['test/integration/relay.test.ts', 'test/integration/bench-smoke.test.ts'];
/**
 * Docker-mode proxies started by the tests go through the shim to a shared engine (the default
 * when built): this run's engines get a name of their own, so that nothing outside the run talks
 * to them, and global-setup.ts kills whatever engine of this name is left at the end.
 */
const ENGINE_SOCKET = `upt-test-${process.pid}`; // = RUN_ENGINE_SOCKET of test/helpers/shared-engines.ts
// global-setup.ts runs in this process: its teardown kills this run's engines, never those of a
// run that started this one (node-versions.test.ts runs suites under other Node majors in a
// nested vitest, whose environment would otherwise name the outer run's engines).
process.env.USERLAND_PROXY_ENGINE_SOCKET = ENGINE_SOCKET;

/**
 * The longest files (an image build and private dockerds, the reference's 90 s UDP timeout) start
 * first in their project, so that none of them is the last to finish: without the results of an
 * earlier run (a fresh clone), vitest orders by file size and started the image build last.
 */
const LONGEST = ['test/deploy/container-image.test.ts', 'test/integration/dockerd-e2e.test.ts', 'test/integration/differential.test.ts'];
class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files); // each project's files together, in run order
    const first = (s: TestSpecification): boolean => LONGEST.some((f) => s.moduleId.endsWith(f));
    const projects = [...new Set(sorted.map((s) => s.project.name))];
    return projects.flatMap((name) => {
      const own = sorted.filter((s) => s.project.name === name);
      return [...own.filter(first), ...own.filter((s) => !first(s))];
    });
  }
}

/** A project: its files, run on `engine` (spawned proxies read the same variable), in group `groupOrder`. */
function project(name: string, engine: 'js' | 'native', groupOrder: number, files: { include: string[]; exclude?: string[]; isolate?: boolean }) {
  return {
    extends: true as const,
    test: { name, ...files, env: { USERLAND_PROXY_ENGINE: engine, USERLAND_PROXY_ENGINE_SOCKET: ENGINE_SOCKET }, sequence: { groupOrder } },
  };
}

export default defineConfig({
  test: {
    globalSetup: ['test/helpers/global-setup.ts'],
    env: { USERLAND_PROXY_ENGINE_SOCKET: ENGINE_SOCKET },
    maxWorkers: 3,
    sequence: { sequencer: LongestFirst },
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    projects: [
      // Pure functions of src/: one worker process runs many files (a fresh process per file
      // cost about 0.7 s of CPU each, for no isolation they need).
      project('unit', 'js', 0, { include: ['test/unit/**/*.test.ts'], isolate: false }),
      project('js', 'js', 0, { include: ['test/**/*.test.ts'], exclude: ['test/unit/**', 'test/integration/native-engine.test.ts'] }),
      project('native', 'native', 1, { include: ['test/integration/**/*.test.ts'], exclude: ONCE }),
    ],
  },
});
