#!/usr/bin/env node
/**
 * Entry point. docker-proxy's command line always starts with a flag (`-proto ...`: what dockerd
 * passes), so flags select docker mode; a command word (`run`, `check`, `demo`, `help`) or no
 * argument at all selects standalone mode, loaded lazily, so that docker mode stays cheap.
 */
const argv = process.argv.slice(2);
const first = argv[0];

if (first === undefined || !first.startsWith('-')) {
  const { runStandalone } = await import('./standalone-cli.js');
  await runStandalone(first === 'help' ? ['--help'] : argv);
} else {
  const { runDockerMode } = await import('./docker-mode.js');
  await runDockerMode(argv);
}
