/**
 * The engine under test. vitest.config.ts runs the suites once per engine and sets
 * USERLAND_PROXY_ENGINE for each project; spawned proxies read the same variable.
 */
export function testEngine(): 'js' | 'native' {
  return process.env.USERLAND_PROXY_ENGINE === 'native' ? 'native' : 'js';
}
