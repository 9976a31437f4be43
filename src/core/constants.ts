/**
 * Every tunable and default in one place. Logic files import from here so that no magic number
 * hides in a code path; the README's flag and environment tables document the same values.
 */

/** File descriptor of dockerd's status pipe ("signal-parent"): `0\n` on success, `1\n<err>` on failure. */
export const STATUS_FD = 3;
/** File descriptor of the socket dockerd 28+ pre-binds and passes with `-use-listen-fd`. */
export const LISTEN_FD = 4;

/** The program's name in every message. */
export const PROGRAM = 'userland-proxy';

/** Listen backlog we ask for; the kernel caps it at net.core.somaxconn, as Go's listen(-1) does. */
export const LISTEN_BACKLOG = 65535;

/** Go's default TCP keepalive on accepted connections (idle and interval). */
export const CLIENT_KEEPALIVE_MS = 15_000;

/** Relay read buffer while a direction's reads are small: what an idle connection pins per direction. */
export const RELAY_SMALL_BUFFER = 2 * 1024;
/** Relay read buffer once a read fills the small one (bulk transfer). */
export const RELAY_BIG_BUFFER = 256 * 1024;
/**
 * A direction stops reading when the other socket holds this many unsent bytes. Above one big
 * buffer, so that a transfer momentarily faster than the receiver does not pause per read.
 */
export const RELAY_HIGH_WATER_MARK = 1024 * 1024;
/**
 * JavaScript engine: bytes all connections of one thread may hold in write queues before every
 * direction pauses after each queued write and reads into small buffers (bounds the memory a
 * crowd of stalled readers can pin to this plus about one buffer each).
 */
export const RELAY_QUEUE_BUDGET = 64 * 1024 * 1024;
/**
 * Native engine: each direction's pipe holds at most the buffer limit, within these bounds. The
 * upper bound is the unprivileged fs.pipe-max-size; 1 MiB pipes are where splice beats Go's
 * 64 KiB ones (splice-notes.md). A pipe is held only while bytes are in flight.
 */
export const NATIVE_PIPE_MIN = 64 * 1024;
export const NATIVE_PIPE_MAX = 1024 * 1024;
/** How often idle connections' big read buffers are swapped for small ones. */
export const RELAY_IDLE_SWEEP_MS = 5_000;
/** Consecutive small reads after which a direction goes back to the small buffer. */
export const RELAY_SHRINK_AFTER = 64;
/** Free buffers kept for reuse, process-wide. */
export const RELAY_FREE_SMALL = 256;
export const RELAY_FREE_BIG = 16;

/** A dial to the target gives up after this long (docker-proxy waits for the kernel, ~2 min). */
export const TCP_CONNECT_TIMEOUT_MS = 30_000;
/** TCP idle timeout: off by default, as in docker-proxy (0 = never). */
export const TCP_IDLE_TIMEOUT_MS = 0;
/**
 * A half-closed connection with no byte either way for this long is closed: sockets stuck in
 * CLOSE_WAIT/FIN_WAIT2 must not pile up (docker/for-linux#335). Long enough not to cut a peer
 * that half-closes and then waits for a slow answer.
 */
export const TCP_LINGER_TIMEOUT_MS = 600_000;

/** Docker's UDP "conntrack" idle timeout: a flow with no datagram either way for this long expires. */
export const UDP_IDLE_TIMEOUT_MS = 90_000;
/** Default bound on concurrent UDP flows (each costs one socket); docker-proxy has none. */
export const UDP_MAX_FLOWS = 16_384;
/**
 * 1/this of a mapping's UDP flows stays for other client addresses: one address holds at most the
 * rest (12288 of the default 16384), so a flood of source ports from one host cannot lock out
 * every other client.
 */
export const UDP_OTHERS_SHARE_DIVISOR = 4;
/**
 * Shared engine (audit N7): one mapping may take at most the fd budget less 1/N of it for its
 * connections and flows (unless USERLAND_PROXY_MAX_CONNECTIONS says otherwise), so that one busy
 * or attacked port never takes the last fds of every other container's port.
 */
export const FD_OTHERS_SHARE_DIVISOR = 4;
/** The native engine's pipes have 1/N of the process's fds to themselves (fd-limit.ts, audit N8). */
export const PIPE_SHARE_DIVISOR = 8;
/** Datagrams buffered per flow while its upstream socket is still connecting. */
export const UDP_PENDING_PER_FLOW = 64;
/** Datagrams that may sit in libuv's send queue of one socket before we drop instead of queueing. */
export const UDP_SEND_QUEUE_MAX = 1024;
/**
 * SO_RCVBUF/SO_SNDBUF we ask for on the UDP listening socket and on each flow socket. Bursts
 * that arrive while the event loop is busy wait in the kernel instead of being dropped
 * (RcvbufErrors); the kernel caps the request at net.core.rmem_max / wmem_max and only charges
 * memory that is queued. docker-proxy keeps the 208 KiB default.
 */
export const UDP_LISTENER_BUFFER = 4 * 1024 * 1024;
export const UDP_FLOW_BUFFER = 1024 * 1024;
/** Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); docker-proxy's buffer size. */
export const UDP_MAX_PAYLOAD = 65_507;
/** Bounds of the flow-expiry sweep period (it is a tenth of the idle timeout, clamped). */
export const UDP_SWEEP_MIN_MS = 50;
export const UDP_SWEEP_MAX_MS = 1_000;

/**
 * File descriptors kept free under RLIMIT_NOFILE for Node itself, logs, status pipes and the
 * native engine's epoll (its pipes are taken from the budget like sockets).
 */
export const FD_RESERVE = 32;
/** fds a mapping's worker thread takes from the budget for itself (its event loop, its native engine). */
export const WORKER_FDS = 8;

/** Repeated errors of one kind are logged once, then at most once per window with a count. */
export const LOG_RATE_WINDOW_MS = 10_000;
/**
 * Log lines a failing log file (ENOSPC, EIO) may hold in memory before new lines are dropped:
 * a full disk must cost neither the process nor unbounded memory (audit N3).
 */
export const LOG_MAX_BUFFERED = 1 << 20;

/** After SIGINT/SIGTERM the process exits at the latest after this long (dockerd waits forever). */
export const SHUTDOWN_HARD_DEADLINE_MS = 900;

/** Standalone mode: how long open connections may finish after SIGTERM or a removed mapping. */
export const DRAIN_TIMEOUT_MS = 10_000;

/** A crashed worker is restarted after 100 ms, doubling per consecutive crash, up to 30 s. */
export const RESTART_BACKOFF_MIN_MS = 100;
export const RESTART_BACKOFF_MAX_MS = 30_000;
/** A worker that stayed up this long starts the backoff afresh when it next crashes. */
export const RESTART_RESET_AFTER_MS = 60_000;
/** How long a scrape waits for a worker's counters. */
export const STATS_TIMEOUT_MS = 1_000;

/**
 * The HTTP endpoint (metrics, health, reload): at most this many connections at once (their fds
 * come out of the process budget), headers within 10 s, a whole request within 30 s.
 */
export const METRICS_MAX_CONNECTIONS = 64;
export const METRICS_HEADERS_TIMEOUT_MS = 10_000;
export const METRICS_REQUEST_TIMEOUT_MS = 30_000;
export const METRICS_KEEPALIVE_TIMEOUT_MS = 5_000;
export const METRICS_CHECK_INTERVAL_MS = 1_000;

/** Docker mode's textfile-collector metrics file is rewritten this often. */
export const TEXTFILE_INTERVAL_MS = 5_000;

/** Prefix of every environment variable we read. */
export const ENV_PREFIX = 'USERLAND_PROXY_';
/** The shim protocol's version (native/ctl-msg.h CTL_PROTOCOL, which says what each one means). */
export const CTL_PROTOCOL = 2;

/** The shared engine (docker mode) exits after this long without a mapping (USERLAND_PROXY_SHARED_IDLE_TIMEOUT). */
export const SHARED_IDLE_TIMEOUT_MS = 30_000;
/**
 * A mapping whose dockerd died (a restart, live-restore) keeps relaying its established TCP
 * connections for at most this long after its listener closed (USERLAND_PROXY_SHARED_DRAIN_TIMEOUT);
 * then what is left is closed, with resets where bytes are pending.
 */
export const SHARED_DRAIN_TIMEOUT_MS = 600_000;
/** A new engine waits this long for the running one to answer its take-over (U). */
export const TAKE_OVER_TIMEOUT_MS = 5_000;
/**
 * An engine that found another version installed (audit N9) waits this long for that version's
 * engine to take over before it serves the waiting registrations itself: well inside the shim's
 * 5 s ready deadline.
 */
export const SUCCESSOR_WAIT_MS = 3_000;
/** userland-proxy upgrade waits this long for every mapping to reach the new engine. */
export const UPGRADE_WAIT_MS = 20_000;
/** How often the shared engine looks whether a draining mapping's last connection ended. */
export const SHARED_DRAIN_CHECK_MS = 1_000;
/**
 * Shared engine: a mapping whose own code threw is closed and its shim registers it again; after
 * this many faults within MAPPING_FAULT_WINDOW_MS the engine refuses it, and the shim serves that
 * port in a process of its own (a fault then costs that port alone, as with docker-proxy).
 */
export const MAPPING_FAULT_LIMIT = 3;
export const MAPPING_FAULT_WINDOW_MS = 60_000;
/** Characters of JSON per message of an engine listing (userland-proxy ls): well inside one SEQPACKET message. */
export const ENGINE_LIST_CHUNK = 16_000;
/**
 * native/shim.c's tunables, documented here (C cannot import them): a registration gets 5 s
 * (dockerd gives up after 16 s: the per-port proxy then has 11 s left); a stop waits at most SHIM_STOP_WAIT_MS for the engine's
 * acknowledgement; after an engine death the mapping serves again within 1 s, through a new
 * engine or the per-port proxy on the socket the shim held.
 */
export const SHIM_STOP_WAIT_MS = 5_000;
