/**
 * The engine under test. vitest.config.ts runs the suites once per engine and sets
 * USERLAND_PROXY_ENGINE for each project; spawned proxies read the same variable.
 */
export function testEngine(): 'js' | 'native' {
  return process.env.USERLAND_PROXY_ENGINE === 'native' ? 'native' : 'js';
}

/**
 * True in test/run-majors.mjs's runs on Node 22, 24 and 26: cases that do not depend on the Node
 * line (the reference docker-proxy's own runs) are made in the main run only.
 */
export const MAJOR_RERUN = process.env.UPT_MAJOR_RERUN !== undefined;
