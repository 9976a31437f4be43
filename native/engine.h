/*
 * The native engine's shared types (native/): one epoll thread per Node environment relays TCP
 * with splice(2) and UDP with recvmmsg/sendmmsg. Split by role, as passt splits its C:
 *   engine.h   this file: tunables, the JS<->C contract tables, types, cross-file functions
 *   binding.c  the N-API face (the contract with src/data-path/native-engine.ts is stated at its top)
 *   accept.c   TCP listeners: accept4 batches, access lists, caps, the dial, the PROXY header
 *   access.c   access lists and the process fd budget, for both protocols
 *   tcp.c      pipes and the splice relay of a TCP connection
 *   time-wait.c  ending the TIME_WAIT of a target connection closed first by us (SOCK_DESTROY)
 *   udp.c      flows, per-source quotas, batched receive and send
 *   loop.c     the thread: epoll loop, commands from JavaScript, sweeps, events to JavaScript
 */
#ifndef USERLAND_PROXY_ENGINE_H
#define USERLAND_PROXY_ENGINE_H
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <linux/inet_diag.h>
#include <time.h>
#include <unistd.h>

/* Tunables (mirrors of src/core/constants.ts where both exist). */
#define EVENTS_PER_WAIT 128
#define PIPE_POOL_MAX 8 /* idle pipes kept per thread: 16 fds, inside JS's FD_RESERVE */
#define POOL_TRIM_MS 5000 /* pooled pipes unused for this long are closed */
#define QUOTA_BUCKETS 256 /* per-source flow counts of one UDP mapping */
#define UDP_BATCH 32 /* datagrams per recvmmsg/sendmmsg */
#define UDP_SLOT 65536 /* one datagram buffer: the largest UDP payload fits */
#define UDP_FLOW_BUFFER (1 << 20) /* SO_RCVBUF/SO_SNDBUF of each flow socket */
#define GSO_MAX_SEGS 64 /* UDP_MAX_SEGMENTS of older kernels */
#define GSO_MAX_BYTES 60000 /* one GSO message stays below the 64 KiB IP limit */
#define GSO_MAX_SEGMENT 1400 /* larger datagrams may not fit the path MTU: sent plainly */
#define UDP_ROUNDS 8 /* recvmmsg batches per wakeup before other sockets get a turn */
#define ACCEPT_BATCH 64 /* accept4 calls per listener wakeup before other sockets get a turn */
#define ACCEPT_RETRY_MS 100 /* after EMFILE/ENFILE/ENOBUFS/ENOMEM, accepting pauses this long */
#define CLIENT_KEEPALIVE_S 15 /* Go's keepalive on accepted clients (CLIENT_KEEPALIVE_MS) */
#define SMALL_READ 16384 /* the relay's copy buffer: bursts up to this size skip the pipe */
#define PROXY_HEADER_MAX 232 /* the longest v1 line (107) and v2 header (16 + 216) fit */
#define THREAD_STACK (256 * 1024)
#define MAX_TICK_MS 1000

/* The JS<->C contract, each list written once: the enums below and the `contract` export that
 * native-engine.ts compares with its own tables when it loads the addon (a mismatch refuses the
 * addon instead of silently swapping counters). */
// clang-format off
/* What a listener reports to JavaScript, which logs it (rate-limited): once per event kind and
 * group per epoll batch, as EVENT_SLOTS doubles [groupId, event, detail, client bytes 0-7, 8-15]:
 * detail an errno (accept, connect) or, for blocked, the family (4, 6) of the last client refused,
 * whose address bytes (addr_plain) fill the last two slots. */
#define EVENTS(X) \
  X(EV_LIMIT, "limit") \
  X(EV_BLOCKED, "blocked") \
  X(EV_BUDGET, "fdBudget") \
  X(EV_ACCEPT, "acceptError") \
  X(EV_CONNECT, "connectError") \
  X(EV_CONNECT_TIMEOUT, "connectTimeout") \
  X(EV_IDLE, "idle") \
  X(EV_LINGER, "linger") \
  X(EV_FLOW_LIMIT, "flowLimit") \
  X(EV_FLOW_ERROR, "flowError") \
  X(EV_TIME_WAIT, "timeWait")
/* TCP counters: indices into the group's Float64Array, named as the TcpStats keys they feed
 * (dotted: a key of a nested object). The two histograms follow them (H_CONNECT, H_LIFETIME). */
#define TCP_COUNTERS(X) \
  X(T_BYTES_IN, "bytesIn") \
  X(T_BYTES_OUT, "bytesOut") \
  X(T_PAUSES_CLIENT, "pausesClient") \
  X(T_PAUSES_UPSTREAM, "pausesUpstream") \
  X(T_ACCEPTED, "accepted") \
  X(T_ACTIVE, "active") \
  X(T_ACCEPT_ERRORS, "acceptErrors") \
  X(T_REJECTED_LIMIT, "rejectedLimit") \
  X(T_REJECTED_BLOCKED, "rejectedBlocked") \
  X(T_ABORTED, "aborted") \
  X(T_IDLE_TIMEOUTS, "idleTimeouts") \
  X(T_LINGER_TIMEOUTS, "lingerTimeouts") \
  X(T_CONNECT_REFUSED, "connectErrors.refused") \
  X(T_CONNECT_TIMEOUT, "connectErrors.timeout") \
  X(T_CONNECT_UNREACHABLE, "connectErrors.unreachable") \
  X(T_CONNECT_OTHER, "connectErrors.other") \
  X(T_CONNECT_NO_PORT, "connectErrors.noLocalPort") \
  X(T_TIME_WAIT_ENDED, "timeWaitEnded")
/* UDP counters, named as the UdpStats keys. */
#define UDP_COUNTERS(X) \
  X(U_FLOWS_CREATED, "flowsCreated") \
  X(U_FLOWS_ACTIVE, "flowsActive") \
  X(U_FLOWS_EXPIRED, "flowsExpired") \
  X(U_DGRAMS_IN, "datagramsIn") \
  X(U_BYTES_IN, "bytesIn") \
  X(U_DGRAMS_OUT, "datagramsOut") \
  X(U_BYTES_OUT, "bytesOut") \
  X(U_DROP_LIMIT, "droppedFlowLimit") \
  X(U_DROP_QUEUE, "droppedQueueFull") \
  X(U_DROP_SEND, "droppedSendError") \
  X(U_DROP_BLOCKED, "droppedBlocked") \
  X(U_REFUSED, "refused")
// clang-format on
#define ENUM_ITEM(id, name) id,
enum { EVENTS(ENUM_ITEM) EV_COUNT };
#define EVENT_SLOTS 5
enum { TCP_COUNTERS(ENUM_ITEM) T_COUNT };
/* The histograms' upper bounds, seconds (histogram.ts CONNECT_BUCKETS, LIFETIME_BUCKETS). Each
 * takes counts (bounds + 1, the last for +Inf), then sum and count, after the TCP counters. */
#define CONNECT_BOUNDS 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5
#define LIFETIME_BOUNDS 0.01, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 1800, 3600
#define N_CONNECT_BOUNDS 13
#define N_LIFETIME_BOUNDS 11
#define H_CONNECT T_COUNT
#define H_LIFETIME (H_CONNECT + N_CONNECT_BOUNDS + 3)
#define TCP_SLOTS (H_LIFETIME + N_LIFETIME_BOUNDS + 3)
enum { UDP_COUNTERS(ENUM_ITEM) U_COUNT };
#define ACL_RECORD_BYTES 18 /* [family, prefix, 16 address bytes] */
/* Why the thread closes a TCP connection (it counts and reports what JavaScript needs). */
enum { R_CLEAN, R_ABORTED, R_IDLE, R_LINGER, R_CLOSED };
enum { W_EVENT, W_TCP, W_TCP_LISTENER, W_UDP_LISTENER, W_UDP_FLOW };

typedef struct engine engine_t;
typedef struct group group_t;

/* What an epoll registration points at. */
typedef struct watch {
  int kind;
  int side;
  void *owner;
} watch_t;

typedef struct pipe_pair {
  int r, w;
  size_t cap;
} pipe_pair_t;

/* One direction of a TCP connection: src -> pipe -> dst. */
typedef struct dir {
  pipe_pair_t p; /* r < 0: no pipe held (only while bytes are in flight) */
  size_t inpipe; /* bytes in the pipe: an EAGAIN from the read splice can mean "pipe out of slots" */
  int eof, shut, blocked;
} dir_t;

/* A target connection whose TIME_WAIT tw_end may remove (time-wait.c): its 4-tuple and cookie. */
typedef struct tw_id {
  struct inet_diag_sockid id;
  uint8_t family; /* 0: not marked (the target closed first, or marking failed) */
} tw_id_t;

typedef struct conn {
  watch_t w[2];
  group_t *g;
  uint32_t id;
  int fd[2]; /* 0 client, 1 target */
  dir_t d[2]; /* 0 client->target, 1 target->client */
  int64_t last; /* monotonic ms of the last byte read either way */
  double t0; /* accept time, seconds (CLOCK_MONOTONIC): the histograms' origin */
  int64_t deadline; /* while dialing: give up at this monotonic ms (0: never) */
  int dialing, connected, dead;
  uint32_t early; /* the client's epoll events while dialing, acted on at the connect */
  uint8_t *hdr; /* the PROXY header, built at accept from accept4's address (freed once sent) */
  int hlen;
  struct conn *prev, *next, *dead_next;
  struct conn *dprev, *dnext; /* the group's dial queue, in deadline order */
  tw_id_t tw; /* marked when our FIN reached the target before its own */
} conn_t;

typedef struct flow {
  watch_t w;
  group_t *g;
  int fd;
  struct sockaddr_storage client;
  socklen_t clen;
  int has_dst;
  union {
    struct in_pktinfo v4;
    struct in6_pktinfo v6;
  } dst; /* where the client sent to */
  int64_t last;
  struct flow *hnext, *prev, *next;
} flow_t;

typedef struct acl_entry {
  uint8_t family, prefix, addr[16];
} acl_entry_t;

/* Flows per client address across the groups (ports) of one UDP mapping, which share its
 * counters array: that pointer identifies the mapping. Thread-only. */
typedef struct src_count {
  uint8_t addr[16];
  int n;
  struct src_count *next;
} src_count_t;
typedef struct quota {
  double *ctr;
  int refs;
  src_count_t *b[QUOTA_BUCKETS];
  struct quota *next;
} quota_t;

struct group {
  int id, kind, closed;
  double *ctr;
  napi_ref ctr_ref;
  int64_t idle_ms, linger_ms, sweep_ms, next_sweep;
  /* TCP */
  size_t pipe_bytes;
  conn_t *conns;
  conn_t *dial_head, *dial_tail;
  int64_t connect_ms, max_conns; /* max_conns < 0: no cap */
  int conn_fds, proxy; /* fds a connection takes from the budget; PROXY header 0 off, 1 v1, 2 v2 */
  int64_t accept_resume; /* > 0: accepting paused (EMFILE...) until this monotonic ms */
  int ev_n[EV_COUNT], ev_detail[EV_COUNT], ev_queued;
  uint8_t ev_client[16]; /* the last client the access lists refused (EV_BLOCKED) */
  group_t *ev_next;
  /* both: the listener (TCP listening socket or UDP socket) */
  watch_t lw;
  int lfd;
  /* UDP */
  int lfamily, wildcard, max_flows, per_source, nflows, no_gso;
  quota_t *quota;
  int32_t *budget; /* the process fd budget (shared memory): [0] fds in use; the last two cells: the
                    * pipes' own allowance and the pipe fds in use (fd-limit.ts) */
  size_t budget_len;
  napi_ref budget_ref; /* keeps that memory alive */
  int budget_own; /* > 0: this worker's own cell, counted too (fd-limit.ts) */
  int64_t budget_limit;
  volatile int draining;
  int js_closed; /* main thread only */
  int owners; /* atomic: the thread (until it retires the group) and JavaScript's external */
  struct group *retired_next;
  struct sockaddr_storage target;
  socklen_t tlen;
  acl_entry_t *allow, *deny;
  int nallow, ndeny;
  flow_t **table, *flows;
  size_t buckets;
  group_t *next;
};

typedef struct cmd {
  int op;
  group_t *g, *src; /* src: the group C_ADOPT_FLOWS takes the flows of */
  struct cmd *next;
} cmd_t;
enum { C_STOP_GROUP, C_CLOSE_GROUP, C_UNWATCH_GROUP, C_ADOPT_FLOWS };

struct engine {
  int epfd, evfd, started;
  volatile int stop;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t done_cv; /* signalled after each command */
  uint64_t posted, done; /* commands posted and run (under mu): JavaScript waits for its own */
  cmd_t *cmds, **cmds_tail;
  napi_threadsafe_function tsfn;
  int refs, refed; /* main thread only: open groups keep the loop alive */
  group_t *groups; /* open groups: the main thread adds, the thread retires closed ones (under mu) */
  group_t *retired; /* retired groups JavaScript no longer holds: freed on the main thread (under mu) */
  watch_t evw;
  /* thread-only state */
  pipe_pair_t pool[PIPE_POOL_MAX];
  int npool, pool_low; /* pool_low: fewest pooled pipes since the last trim */
  int64_t next_trim;
  quota_t *quotas;
  conn_t *dead;
  group_t *evq; /* groups with events for the next report */
  char small[SMALL_READ]; /* small_copy()'s buffer */
  group_t *budget; /* a group whose fd budget (the environment's one) new pipes are taken from */
  struct udp_io *io;
  int nl; /* the sock_diag socket of tw_end (-1: none yet) */
  int tw_off; /* tw_end failed for want of a privilege or kernel support: not tried again */
};

static inline int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- functions shared between the files ---------- */

/* Monotonic seconds, precise (the histograms; now_ms() is coarse and cheaper). */
static inline double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* SO_LINGER {on, 0}: while on, a close() sends a reset, not a FIN (a peer must never take a
 * refused or truncated stream for a complete one). Every relayed socket is armed from its accept
 * (inherited from the listener, listener_options) or its dial on, so that when the process dies
 * without closing it (SIGKILL, the OOM killer, a crash) the kernel resets it instead of passing a
 * truncated transfer off with a FIN (audit N4); a deliberate clean close disarms it first. */
static inline void reset_on_close(int fd, int on) {
  struct linger l = { on, 0 };
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* binding.c */
void group_release(engine_t *e, group_t *g, int from_thread);

/* access.c */
int addr_bytes(const struct sockaddr_storage *ss, uint8_t out[16], int *family);
int addr_plain(const struct sockaddr_storage *ss, uint8_t out[16], int *family);
int acl_allowed(group_t *g, const struct sockaddr_storage *ss);
int budget_take(group_t *g, int n);
void budget_give(group_t *g, int n);
int pipe_budget_take(group_t *g);
int pipe_budget_room(group_t *g);
void pipe_budget_give(group_t *g);

/* accept.c */
void tcp_listener_event(engine_t *e, group_t *g, int64_t now);
void listener_options(int fd);
void dial_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now);
int64_t tcp_timers(engine_t *e, group_t *g, int64_t now);

/* tcp.c (below accept.c: it never calls up into it) */
void observe(double *h, const double *bounds, int n, double v);
extern const double connect_bounds[N_CONNECT_BOUNDS], lifetime_bounds[N_LIFETIME_BOUNDS];
void dial_unlink(conn_t *c);
void pipe_close(engine_t *e, pipe_pair_t *p);
void pool_trim(engine_t *e, int64_t now);
void conn_close(engine_t *e, conn_t *c, int reason, int rst);
int conn_pending(const conn_t *c);
void tcp_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now);
void tcp_relay(engine_t *e, conn_t *c, const int want[2], const int hint[2], int64_t now);

/* time-wait.c */
int tw_mark(int fd, tw_id_t *t);
int tw_end(int *nl, int fd, const tw_id_t *t);

/* udp.c */
void flow_close(engine_t *e, flow_t *f);
void flows_adopt(engine_t *e, group_t *dst, group_t *src);
void quota_put(engine_t *e, quota_t *q);
quota_t *quota_get(engine_t *e, double *ctr);
int table_grow(group_t *g);
void udp_listener_event(engine_t *e, group_t *g, int64_t now);
void udp_flow_event(engine_t *e, flow_t *f, int64_t now);

/* loop.c */
void group_event(engine_t *e, group_t *g, int ev, int detail);
void group_blocked(engine_t *e, group_t *g, const struct sockaddr_storage *ss);
void *thread_main(void *arg);

/* control.c: the shared engine's control socket functions, added to the exports. */
void control_define(napi_env env, napi_value exports);

#endif
