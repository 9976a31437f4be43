/**
 * How every process ends on an error, whichever model it runs (a per-port proxy, the shared
 * engine, the standalone daemon, a command): one line on stderr, never a stack dump; the log's
 * own line when the log is a file (the stack too, for an internal error); the exit status the
 * error catalog gives the error's code (errors.ts).
 */
import { PROGRAM } from './constants.js';
import { toProxyError } from './errors.js';
import type { Log } from './logger.js';

/** What a process says before its message (`userland-proxy engine: ...`), and its log. */
export interface Ending {
  prefix?: string;
  log?: Log;
  /** A flag syntax error (exit 2) points at the usage, as Go's flag package prints it. */
  usageHint?: boolean;
  /** Runs first with the error's message (docker mode: "1\n<message>" on the status pipe). */
  report?: (message: string) => void;
}

/** Ends the process on `err`: logged, one line on stderr, its exit status. */
export function exitWith(err: unknown, how: Ending = {}): never {
  const e = toProxyError(err);
  // stderr gets the one line below; the log repeats it only when it is a separate file.
  if (how.log?.toFile) {
    how.log.error({ code: e.code }, e.message);
    how.log.flush();
  }
  process.stderr.write(`${how.prefix ?? PROGRAM}: ${e.message}${how.usageHint && e.exitCode === 2 ? ' (run with -h for usage)' : ''}\n`);
  how.report?.(e.message);
  process.exit(e.exitCode);
}

/**
 * An exception nothing caught ends the process the same way: the log (a file) gets it with its
 * stack, stderr one line, exit 1. `early` may take it instead (docker mode before "0\n": a
 * startup failure, reported as such).
 */
export function exitOnInternalError(how: () => Ending, early?: (err: Error) => void): void {
  process.on('uncaughtException', (err) => {
    early?.(err);
    const { log, prefix } = how();
    if (log?.toFile) {
      log.fatal({ err: err.message, stack: err.stack }, 'internal error; exiting');
      log.flush();
    }
    process.stderr.write(`${prefix ?? PROGRAM}: internal error: ${err.message}\n`);
    process.exit(1);
  });
}
