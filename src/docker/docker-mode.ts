/**
 * Docker mode: the docker-proxy process contract, for `userland-proxy-path` in daemon.json.
 *
 *   argv   -proto tcp|udp|sctp -host-ip IP -host-port N -container-ip IP -container-port N
 *          [-use-listen-fd]   (Go flag syntax; see docker-flags.ts)
 *   fd 0-2 /dev/null under dockerd (logs go to USERLAND_PROXY_LOG_FILE, see docker-env.ts)
 *   fd 3   status pipe: "0\n" in one write once listening, or "1\n<error>" and exit 1
 *   fd 4   with -use-listen-fd only: dockerd's pre-bound socket (TCP listening, UDP bound);
 *          never touched without the flag
 *   SIGINT, SIGTERM  close the listener and every connection/flow, exit 0 at once (dockerd
 *          waits forever with no SIGKILL; Pdeathsig sends SIGTERM when dockerd dies)
 *   SIGHUP reopen the log file (docker-proxy dies on it)
 *   exit   0 stopped by signal, -h, -v; 1 startup failure; 2 flag syntax error
 *
 * Improvements over docker-proxy: flag errors are also reported on fd 3 (dockerd would otherwise
 * show an empty error); invalid addresses fail at start instead of listening on [::] or failing
 * per connection; signal handlers exist before anything else, so there is no window in which a
 * signal kills us; accept errors never end the process.
 *
 * The forwarder runs on the main thread: one mapping per process needs no worker, and a worker
 * would cost 7.5 MiB more Private_Dirty and 25-40 ms more startup per published port (measured,
 * see README), breaking the 12 MiB idle budget.
 */
import { LISTEN_FD, PROGRAM } from '../core/constants.js';
import { openDockerMapping } from './docker-mapping.js';
import { DOCKER_FLAGS, parseDockerArgs } from './docker-flags.js';
import { FdBudget } from '../core/fd-limit.js';
import { nativeLoadable } from '../data-path/native-engine.js';
import { releaseSignals } from '../core/early-signals.js';
import { formatUsage, type GoFlagResult } from '../core/go-flags.js';
import { silentLog, type Log } from '../core/logger.js';
import { reportFailure, reportReady } from './status-pipe.js';
import { exitOnInternalError, exitWith } from '../core/lifecycle.js';
import { packageVersion } from '../core/version.js';

/** Writes one line to stderr and the status pipe, then exits with the error's status. */
function fail(err: unknown, log: Log): never {
  exitWith(err, { log, usageHint: true, report: reportFailure });
}

/** Runs docker mode with argv (without the program name). Resolves once serving. */
export async function runDockerMode(argv: readonly string[]): Promise<void> {
  let log: Log = silentLog;
  let forwarder: { close(): void } | null = null;
  let ready = false;

  // Handlers first: a SIGINT at any moment, even before "0\n", ends us with exit 0.
  const stop = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'stopping');
    forwarder?.close();
    log.flush();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGHUP', () => {
    try {
      log.reopen();
    } catch (err) {
      process.stderr.write(`${PROGRAM}: ${(err as Error).message}\n`);
    }
  });
  releaseSignals('SIGINT', 'SIGTERM', 'SIGHUP');
  exitOnInternalError(
    () => ({ log }),
    (err) => {
      if (!ready) fail(err, log);
    },
  );

  let flags: GoFlagResult;
  try {
    flags = parseDockerArgs(argv);
  } catch (err) {
    fail(err, log);
  }
  if (flags.help) {
    process.stderr.write(formatUsage(PROGRAM, DOCKER_FLAGS));
    process.exit(0);
  }
  if (flags.values.get('v') === true || flags.values.get('version') === true) {
    process.stdout.write(`${PROGRAM} version ${packageVersion()} (docker-proxy compatible, node ${process.version})\n`);
    process.exit(0);
  }

  try {
    // The process fd budget (fd-limit.ts); openMapping takes the listener's fd from it.
    const proxy = await openDockerMapping(flags, {
      env: process.env,
      listenFd: (m) => (m.useListenFd ? LISTEN_FD : null),
      budget: FdBudget.forProcess(0, nativeLoadable()),
      onLog: (l) => {
        log = l;
      },
    });
    forwarder = proxy;
    ready = true;
    reportReady();
    log.info({ target: proxy.target, listenFd: proxy.mapping.useListenFd, version: packageVersion(), engine: proxy.engine }, 'proxy ready');
  } catch (err) {
    fail(err, log);
  }
}
