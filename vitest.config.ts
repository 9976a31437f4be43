import { defineConfig } from 'vitest/config';

/**
 * Two projects, one per engine: every suite runs on the JavaScript engine, and every integration
 * suite (test/integration: the data path) runs again on the native one, except those about the
 * JavaScript relay's own internals (`native` is forced, so a missing addon fails CI instead of
 * silently testing JavaScript twice). Unit suites (test/unit) and deploy suites (test/deploy)
 * run once. groupOrder runs the projects one after the other: the same suite in both at once
 * would fight over dockerd and fixed resources. Integration suites spawn real processes and
 * namespaces: two files at a time fits 2 cores.
 */
/** Integration suites that run once: the JavaScript relay's internals, and the bench harness (it runs both engines itself). */
const ONCE = ['test/integration/relay.test.ts', 'test/integration/bench-smoke.test.ts'];

export default defineConfig({
  test: {
    globalSetup: ['test/helpers/global-setup.ts'],
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    projects: [
      {
        extends: true,
        test: {
          name: 'js',
          include: ['test/**/*.test.ts'],
          exclude: ['test/integration/native-engine.test.ts'],
          env: { USERLAND_PROXY_ENGINE: 'js' },
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'native',
          include: ['test/integration/**/*.test.ts'],
          exclude: ONCE,
          env: { USERLAND_PROXY_ENGINE: 'native' },
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
