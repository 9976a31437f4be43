#!/usr/bin/env node
/**
 * Entry point. docker-proxy's command line always starts with a flag (`-proto ...`: what dockerd
 * passes), so flags select docker mode; `engine` is the shared engine of docker mode (started by
 * native/shim.c), `ls` and `upgrade` its commands for a person; any other command word (`run`,
 * `check`, `demo`, `help`) or no argument at all selects standalone mode. Each is loaded lazily,
 * so that docker mode stays cheap.
 * No top-level await: the single-file executable (deploy/sea) bundles this as CommonJS.
 */
import { holdSignals } from './core/early-signals.js';

holdSignals();
const argv = process.argv.slice(2);
const first = argv[0];

if (first === 'engine') {
  void import('./shared-engine/engine.js').then(({ runEngine }) => runEngine(argv.slice(1)));
} else if ((first === 'ls' || first === 'upgrade') && !argv.includes('--help') && !argv.includes('-h')) {
  void import('./shared-engine/commands.js').then(({ runEngineCommand }) => runEngineCommand(argv));
} else if (first === undefined || !first.startsWith('-')) {
  void import('./standalone/standalone-cli.js').then(({ runStandalone }) => runStandalone(first === 'help' ? ['--help'] : argv));
} else {
  void import('./docker/docker-mode.js').then(({ runDockerMode }) => runDockerMode(argv));
}
