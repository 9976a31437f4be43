/**
 * The shared engine's commands for a person: `userland-proxy ls [--json]` (its mappings with
 * their counters) and `userland-proxy upgrade` (every mapping moved to an engine of the installed
 * code). cli.ts sends these words here; `userland-proxy help` lists them with the others.
 * Errors: one line on stderr, exit 2 for a wrong argument, 1 for a failure.
 */
import { exitWith } from '../core/lifecycle.js';
import { ProxyError } from '../core/errors.js';
import { formatListing, queryEngine } from './engine-list.js';
import { upgradeEngine } from './engine-upgrade.js';

/** Runs `ls` or `upgrade` (argv: the command word first) and exits. */
export async function runEngineCommand(argv: readonly string[]): Promise<void> {
  const [command, ...rest] = argv;
  const json = command === 'ls' && rest.length === 1 && rest[0] === '--json';
  if (rest.length > (json ? 1 : 0))
    exitWith(
      new ProxyError('UPROXY_ERR_BAD_FLAG', `${command}: unexpected argument "${rest[json ? 1 : 0]}"${command === 'ls' ? ' (ls takes only --json)' : ''}`),
    );
  try {
    if (command === 'ls') {
      const rows = queryEngine();
      process.stdout.write(rows === null ? 'no shared engine runs in this network namespace\n' : formatListing(rows, json));
      process.exit(0);
    }
    const r = await upgradeEngine();
    if (r.from === null) {
      process.stdout.write('no shared engine with a mapping runs in this network namespace: nothing to move\n');
      process.exit(0);
    }
    process.stdout.write(
      `moved ${r.moved} of ${r.mappings} mappings from engine pid ${r.from.pid} (version ${r.from.version}) to pid ${r.to?.pid} (version ${r.to?.version}); ` +
        `the old engine relays its ${r.draining} established connections until they end, then exits\n`,
    );
    process.exit(r.moved === r.mappings ? 0 : 1);
  } catch (err) {
    exitWith(err);
  }
}
