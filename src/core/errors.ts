/**
 * The one error catalog. Every failure that reaches a user or a runtime is a ProxyError with a
 * stable code; the code fixes the process exit status. Messages are one line, no stack.
 */

/** Stable error codes and the exit status each one maps to. */
export const ERROR_CODES = {
  /** Command-line syntax: unknown flag, missing or unparsable value (Go's flag package exits 2). */
  UPROXY_ERR_BAD_FLAG: 2,
  /** A flag value that parses but cannot be used (bad IP, port out of range, missing target). */
  UPROXY_ERR_BAD_VALUE: 1,
  /** An environment variable with an invalid value. */
  UPROXY_ERR_BAD_ENV: 1,
  /** A protocol we cannot serve (SCTP: Node.js has no SCTP sockets). */
  UPROXY_ERR_UNSUPPORTED_PROTO: 1,
  /** Binding or listening on the host address failed (in use, permission, no such address). */
  UPROXY_ERR_LISTEN: 1,
  /** The socket passed on fd 4 with -use-listen-fd is missing or of the wrong kind. */
  UPROXY_ERR_LISTEN_FD: 1,
  /** Standalone configuration (specs, config file, environment) is invalid; nothing started. */
  UPROXY_ERR_CONFIG: 2,
  /** The log destination cannot be opened. */
  UPROXY_ERR_LOG: 1,
  /** The native engine failed: forced but unavailable, or a call into it failed (native/binding.c). */
  UPROXY_ERR_NATIVE: 1,
  /** An unexpected internal failure (a bug): logged on one line, exit 1. */
  UPROXY_ERR_INTERNAL: 1,
} as const;

/** One of the stable error codes. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** An error meant for a user or a runtime: stable code, one-line message, fixed exit status. */
export class ProxyError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string) {
    super(message.replace(/[\r\n]+/g, ' '));
    this.name = 'ProxyError';
    this.code = code;
    this.exitCode = ERROR_CODES[code];
  }
}

/** Wraps anything thrown into a ProxyError, keeping ProxyErrors as they are. */
export function toProxyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if ((err as { code?: unknown } | null)?.code === 'UPROXY_ERR_NATIVE') return new ProxyError('UPROXY_ERR_NATIVE', `native engine: ${message}`);
  return new ProxyError('UPROXY_ERR_INTERNAL', `internal error: ${message}`);
}
