/**
 * Logging with pino: JSON lines, lifecycle at info, per connection at debug, never per chunk.
 *
 * In docker mode dockerd gives us /dev/null as stdout/stderr, so logging there is wasted work and
 * pino is not even loaded (startup and memory are features when one process runs per port).
 * `USERLAND_PROXY_LOG_FILE` names a file to append to instead; SIGHUP reopens it (logrotate).
 */
import { fstatSync, statSync, writeSync } from 'node:fs';
import { isatty } from 'node:tty';
import { LOG_MAX_BUFFERED, LOG_RATE_WINDOW_MS } from './constants.js';
import { ProxyError } from './errors.js';

/** Log levels, pino's names. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
/** One of LOG_LEVELS. */
export type LogLevel = (typeof LOG_LEVELS)[number];

type LogFn = (obj: object, msg: string) => void;

/** The logging surface the rest of the code uses (a subset of pino's). */
export interface Log {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  /** True when debug lines are written: guard per-connection logging with it. */
  readonly debugEnabled: boolean;
  /** Reopens the destination file (after logrotate moved it); a no-op for stderr. */
  reopen(): void;
  /** True when lines go to a file rather than stderr. */
  readonly toFile: boolean;
  /** Writes out anything buffered. */
  flush(): void;
}

/** Options of createLogger. */
export interface LoggerOptions {
  level: LogLevel;
  /** Append to this file; when absent, write to stderr unless stderr is /dev/null. */
  file?: string | undefined;
  /** Bound into every line (e.g. the mapping). */
  base?: Record<string, unknown>;
  /**
   * Standalone and demo: when no file is set and stderr is a terminal, write one human-readable,
   * level-coloured line per event instead of JSON (a person is reading).
   */
  humanOnTty?: boolean;
}

const LEVEL_COLOURS: Record<string, string> = {
  trace: '\x1b[90m',
  debug: '\x1b[36m',
  info: '\x1b[32m',
  warn: '\x1b[33m',
  error: '\x1b[31m',
  fatal: '\x1b[35m',
};

/**
 * One JSON log line as a person reads it: `HH:MM:SS.mmm LEVEL [mapping] message key=value ...`,
 * the level coloured unless `colour` is false (NO_COLOR).
 */
export function humanLine(json: string, colour: boolean): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { time, level, msg, pid: _pid, mapping, ...rest } = o;
  const name = String(level ?? '')
    .toUpperCase()
    .padEnd(5);
  const lv = colour ? `${LEVEL_COLOURS[String(level)] ?? ''}${name}\x1b[0m` : name;
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${String(time ?? '').slice(11, 23)} ${lv} ${mapping === undefined ? '' : `[${String(mapping)}] `}${String(msg ?? '')}${fields ? ` ${fields}` : ''}\n`;
}

const noop: LogFn = () => {};

/** A logger that drops everything, at no cost. */
export const silentLog: Log = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: noop,
  debugEnabled: false,
  toFile: false,
  reopen: () => {},
  flush: () => {},
};

/** True when fd 2 is /dev/null (dockerd's setup), i.e. stderr output would be discarded. */
function stderrIsDevNull(): boolean {
  try {
    const s = fstatSync(2);
    const n = statSync('/dev/null');
    return s.isCharacterDevice() && s.rdev === n.rdev;
  } catch {
    return true;
  }
}

/**
 * A log file whose writes fail (a full disk, an I/O error) costs its lines, never the process: an
 * 'error' without a listener would throw wherever the next line was logged, and in the shared
 * engine that is every mapping's (audit N3). Said once per failing spell on stderr; lines past
 * LOG_MAX_BUFFERED are dropped until writes succeed again.
 */
function watchWrites(dest: { on(event: string, fn: (arg: unknown) => void): unknown }, name: string): void {
  let failing = false;
  dest.on('error', (err) => {
    if (failing) return;
    failing = true;
    try {
      writeSync(2, `userland-proxy: cannot write log file ${name}: ${(err as Error).message}; its lines are dropped until writes succeed\n`);
    } catch {}
  });
  dest.on('write', () => {
    failing = false;
  });
}

/** Parses a level name; throws a one-line error naming the value. */
export function parseLogLevel(text: string, source: string): LogLevel {
  if ((LOG_LEVELS as readonly string[]).includes(text)) return text as LogLevel;
  throw new ProxyError('UPROXY_ERR_BAD_ENV', `invalid ${source} "${text}": use one of ${LOG_LEVELS.join(', ')}`);
}

/** One pino logger per destination and level: the shared engine logs every mapping to the same file. */
const roots = new Map<string, { logger: import('pino').Logger; dest: { reopen(): void; flushSync(): void } }>();
let devNull: boolean | undefined;

/**
 * Creates a logger (bound to opts.base); loads pino only when something will be written. Loggers
 * with the same destination and level share one pino instance and one file descriptor.
 */
export async function createLogger(opts: LoggerOptions): Promise<Log> {
  devNull ??= stderrIsDevNull();
  if (opts.level === 'silent' || (!opts.file && devNull)) return silentLog;
  const key = `${opts.file ?? ''}\0${opts.level}\0${opts.humanOnTty === true}`;
  let root = roots.get(key);
  if (root === undefined) {
    const { pino } = await import('pino');
    let dest: ReturnType<typeof pino.destination>;
    try {
      dest = pino.destination({ dest: opts.file ?? 2, sync: true, append: true, mkdir: false, maxLength: LOG_MAX_BUFFERED });
    } catch (err) {
      throw new ProxyError('UPROXY_ERR_LOG', `cannot open log file ${opts.file}: ${(err as Error).message}`);
    }
    watchWrites(dest, opts.file ?? 'stderr');
    // fd 2 directly (a worker thread's process.stderr goes through the main thread): a terminal
    // gets human lines, anything else JSON.
    const human = opts.humanOnTty === true && !opts.file && isatty(2);
    const colour = human && !process.env.NO_COLOR;
    const out = human ? { write: (line: string) => dest.write(humanLine(line, colour)) } : dest;
    const logger = pino(
      {
        level: opts.level,
        base: { pid: process.pid },
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      out,
    );
    root = { logger, dest };
    roots.set(key, root);
  }
  const logger = opts.base ? root.logger.child(opts.base) : root.logger;
  const dest = root.dest;
  return {
    trace: logger.trace.bind(logger),
    debug: logger.debug.bind(logger),
    info: logger.info.bind(logger),
    warn: logger.warn.bind(logger),
    error: logger.error.bind(logger),
    fatal: logger.fatal.bind(logger),
    debugEnabled: logger.isLevelEnabled('debug'),
    toFile: opts.file !== undefined,
    // Only a named file can be reopened (SIGHUP after logrotate); stderr stays as it is.
    reopen: () => {
      if (!opts.file) return;
      try {
        dest.reopen();
      } catch (err) {
        // The old file stays open and written (sonic-boom closes it only once the new one opened).
        throw new ProxyError('UPROXY_ERR_LOG', `cannot reopen log file ${opts.file}: ${(err as Error).message}`);
      }
    },
    flush: () => dest.flushSync(),
  };
}

/**
 * Logs a repeating error once, then at most once per window with the number suppressed in
 * between, so an accept storm or a dead target cannot flood the log.
 */
export class RateLimitedLog {
  readonly #log: Log;
  readonly #windowMs: number;
  readonly #state = new Map<string, { last: number; suppressed: number }>();

  constructor(log: Log, windowMs = LOG_RATE_WINDOW_MS) {
    this.#log = log;
    this.#windowMs = windowMs;
  }

  /** Logs at warn unless the same key was logged within the window. */
  warn(key: string, obj: object, msg: string): void {
    const now = Date.now();
    const s = this.#state.get(key);
    if (s && now - s.last < this.#windowMs) {
      s.suppressed++;
      return;
    }
    const suppressed = s?.suppressed ?? 0;
    this.#state.set(key, { last: now, suppressed: 0 });
    this.#log.warn(suppressed > 0 ? { ...obj, suppressed } : obj, msg);
  }
}
