import { defineConfig } from 'vitest/config';

/**
 * Two projects, one per engine: every suite runs on the JavaScript engine, and every suite that
 * touches the data path runs again on the native one (`native` is forced, so a missing addon
 * fails CI instead of silently testing JavaScript twice). groupOrder runs them one after the
 * other: the same suite in both projects at once would fight over dockerd and fixed resources.
 * Integration suites spawn real processes and namespaces: two files at a time fits 2 cores.
 */
const NATIVE_SUITES = [
  'test/integration/access.test.ts',
  'test/integration/differential.test.ts',
  'test/integration/docker-contract.test.ts',
  'test/integration/dockerd-e2e.test.ts',
  'test/integration/faults.test.ts',
  'test/integration/fd-budget.test.ts',
  'test/integration/native-engine.test.ts',
  'test/integration/node-versions.test.ts',
  'test/integration/proxy-protocol.test.ts',
  'test/integration/soak.test.ts',
  'test/integration/standalone.test.ts',
  'test/integration/tcp-forward.test.ts',
  'test/integration/tcp-timeouts.test.ts',
  'test/integration/udp-forward.test.ts',
];

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
        test: { name: 'native', include: NATIVE_SUITES, env: { USERLAND_PROXY_ENGINE: 'native' }, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
