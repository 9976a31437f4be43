#!/usr/bin/env node
/**
 * Entry point. A subcommand (`run`, `check`) selects standalone mode, loaded lazily; anything
 * else is docker-proxy's command line (what dockerd passes), so that a process per published
 * port stays cheap.
 */
const argv = process.argv.slice(2);
const STANDALONE = ['run', 'check', 'help'];

if (argv[0] !== undefined && STANDALONE.includes(argv[0])) {
  const { runStandalone } = await import('./standalone-cli.js');
  await runStandalone(argv[0] === 'help' ? ['--help'] : argv);
} else {
  const { runDockerMode } = await import('./docker-mode.js');
  await runDockerMode(argv);
}
