/*
 * The native data path (issue 6): splice(2) relay for TCP, batched UDP, on one epoll thread per
 * Node environment (the main thread in docker mode, each worker in standalone mode).
 *
 * Contract with JavaScript (src/native-engine.ts is the only caller):
 * - init(onClose)                      once per environment; onClose(batch) receives a flat array
 *                                      [groupId, connId, reason, ...] of closed TCP connections.
 * - tcpGroup(id, counters, idleMs, lingerMs, pipeBytes)      -> group
 * - tcpAdopt(group, connId, clientFd, targetFd)  dups both fds (JS then closes its own copies)
 *                                      and relays them until both directions end or one fails.
 * - udpGroup(id, counters, listenerFd, target, targetPort, idleMs, maxFlows, acl, wildcard)
 *                                      -> group; dups the bound listener and serves every flow.
 * - groupStop(group)                   UDP: open no new flows (graceful drain).
 * - groupClose(group)                  closes everything of the group (FIN, no drain).
 * - shutdown()                       stops the thread (process 'exit'); everything it held closes.
 * Counters live in the caller's Float64Array: only this thread writes them, JavaScript reads
 * them at scrape time (aligned 8-byte stores are atomic on the 64-bit targets we build for).
 *
 * Ownership: JavaScript has accepted, filtered, dialled and written any PROXY header; from the
 * handoff on, nobody but this thread reads or writes the sockets (JS keeps them paused and
 * destroys them right after; libuv does EPOLL_CTL_DEL before close, and the socket lives on in
 * our dup). Every fd we hold is removed from our epoll before close: a registration follows the
 * open file description, not the fd number.
 */
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
#include <time.h>
#include <unistd.h>

/* Tunables (mirrors of src/constants.ts where both exist). */
#define EVENTS_PER_WAIT 128
#define PIPE_POOL_MAX 8           /* idle pipes kept per thread: 16 fds, inside JS's FD_RESERVE */
#define POOL_TRIM_MS 5000         /* pooled pipes unused for this long are closed */
#define QUOTA_BUCKETS 256         /* per-source flow counts of one UDP mapping */
#define UDP_BATCH 32              /* datagrams per recvmmsg/sendmmsg */
#define UDP_SLOT 65536            /* one datagram buffer: the largest UDP payload fits */
#define UDP_FLOW_BUFFER (1 << 20) /* SO_RCVBUF/SO_SNDBUF of each flow socket */
#define GSO_MAX_SEGS 64           /* UDP_MAX_SEGMENTS of older kernels */
#define GSO_MAX_BYTES 60000       /* one GSO message stays below the 64 KiB IP limit */
#define GSO_MAX_SEGMENT 1400      /* larger datagrams may not fit the path MTU: sent plainly */
#define UDP_ROUNDS 8              /* recvmmsg batches per wakeup before other sockets get a turn */
#define THREAD_STACK (256 * 1024)
#define MAX_TICK_MS 1000

/* The JS<->C contract, each list written once: the enums below and the `contract` export that
 * native-engine.ts compares with its own tables when it loads the addon (a mismatch refuses the
 * addon instead of silently swapping counters). */
/* Close reasons reported to JavaScript (CLOSE_REASON). */
#define CLOSE_REASONS(X) X(R_CLEAN, "clean") X(R_ABORTED, "aborted") X(R_IDLE, "idle") X(R_LINGER, "linger") X(R_CLOSED, "closed")
/* TCP counters: indices into the group's Float64Array, named as the TcpStats keys they feed. */
#define TCP_COUNTERS(X) X(T_BYTES_IN, "bytesIn") X(T_BYTES_OUT, "bytesOut") X(T_PAUSES_CLIENT, "pausesClient") \
  X(T_PAUSES_UPSTREAM, "pausesUpstream")
/* UDP counters, named as the UdpStats keys. */
#define UDP_COUNTERS(X) X(U_FLOWS_CREATED, "flowsCreated") X(U_FLOWS_ACTIVE, "flowsActive") X(U_FLOWS_EXPIRED, "flowsExpired") \
  X(U_DGRAMS_IN, "datagramsIn") X(U_BYTES_IN, "bytesIn") X(U_DGRAMS_OUT, "datagramsOut") X(U_BYTES_OUT, "bytesOut") \
  X(U_DROP_LIMIT, "droppedFlowLimit") X(U_DROP_QUEUE, "droppedQueueFull") X(U_DROP_SEND, "droppedSendError") \
  X(U_DROP_BLOCKED, "droppedBlocked") X(U_REFUSED, "refused")
#define ENUM_ITEM(id, name) id,
enum { CLOSE_REASONS(ENUM_ITEM) R_COUNT };
enum { TCP_COUNTERS(ENUM_ITEM) T_COUNT };
enum { UDP_COUNTERS(ENUM_ITEM) U_COUNT };
#define ACL_RECORD_BYTES 18 /* [family, prefix, 16 address bytes] */
enum { W_EVENT, W_TCP, W_UDP_LISTENER, W_UDP_FLOW };

typedef struct engine engine_t;
typedef struct group group_t;

/* What an epoll registration points at. */
typedef struct watch { int kind; int side; void *owner; } watch_t;

typedef struct pipe_pair { int r, w; size_t cap; } pipe_pair_t;

/* One direction of a TCP connection: src -> pipe -> dst. */
typedef struct dir {
  pipe_pair_t p;   /* r < 0: no pipe held (only while bytes are in flight) */
  size_t inpipe;   /* bytes in the pipe: an EAGAIN from the read splice can mean "pipe out of slots" */
  int eof, shut, blocked;
} dir_t;

typedef struct conn {
  watch_t w[2];
  group_t *g;
  uint32_t id;
  int fd[2];       /* 0 client, 1 target */
  dir_t d[2];      /* 0 client->target, 1 target->client */
  int64_t last;    /* monotonic ms of the last byte read either way */
  int dead;
  struct conn *prev, *next, *dead_next;
} conn_t;

typedef struct flow {
  watch_t w;
  group_t *g;
  int fd;
  struct sockaddr_storage client;
  socklen_t clen;
  int has_dst;
  union { struct in_pktinfo v4; struct in6_pktinfo v6; } dst; /* where the client sent to */
  int64_t last;
  struct flow *hnext, *prev, *next;
} flow_t;

typedef struct acl_entry { uint8_t family, prefix, addr[16]; } acl_entry_t;

/* Flows per client address across the groups (ports) of one UDP mapping, which share its
 * counters array: that pointer identifies the mapping. Thread-only. */
typedef struct src_count { uint8_t addr[16]; int n; struct src_count *next; } src_count_t;
typedef struct quota { double *ctr; int refs; src_count_t *b[QUOTA_BUCKETS]; struct quota *next; } quota_t;

struct group {
  int id, kind, closed;
  double *ctr;
  napi_ref ctr_ref;
  int64_t idle_ms, linger_ms, sweep_ms, next_sweep;
  /* TCP */
  size_t pipe_bytes;
  conn_t *conns;
  /* UDP */
  watch_t lw;
  int lfd, lfamily, wildcard, max_flows, per_source, nflows, no_gso;
  quota_t *quota;
  int32_t *budget;       /* the process fd budget (shared memory): [0] fds in use */
  napi_ref budget_ref;   /* keeps that memory alive */
  int budget_own;        /* > 0: this worker's own cell, counted too (fd-limit.ts) */
  int64_t budget_limit;
  int close_done;        /* C_CLOSE_GROUP ran (guarded by the engine mutex) */
  volatile int draining;
  int js_closed;         /* main thread only */
  struct sockaddr_storage target;
  socklen_t tlen;
  acl_entry_t *allow, *deny;
  int nallow, ndeny;
  flow_t **table, *flows;
  size_t buckets;
  group_t *next;
};

typedef struct cmd { int op; group_t *g; conn_t *c; struct cmd *next; } cmd_t;
enum { C_ADD_CONN, C_CLOSE_GROUP };

struct engine {
  int epfd, evfd, started;
  volatile int stop;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t closed_cv; /* signalled after each C_CLOSE_GROUP */
  cmd_t *cmds, **cmds_tail;
  napi_threadsafe_function tsfn;
  int refs, refed;        /* main thread only: live conns + open UDP groups keep the loop alive */
  group_t *groups;        /* main thread owns the list; freed at teardown */
  watch_t evw;
  /* thread-only state */
  pipe_pair_t pool[PIPE_POOL_MAX];
  int npool, pool_low;    /* pool_low: fewest pooled pipes since the last trim */
  int64_t next_trim;
  quota_t *quotas;
  conn_t *dead;
  double *closed; size_t nclosed, capclosed;
  struct udp_io *io;
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- pipes ---------- */

/* A pipe from the pool, or a new one raised to the group's size. F_SETPIPE_SZ fails with EPERM
 * once an unprivileged user holds pipe-user-pages-soft (64 MiB) of pipes; the pipe then keeps its
 * default 64 KiB, which still works. */
static int pipe_get(engine_t *e, dir_t *d, size_t want) {
  if (e->npool > 0) {
    d->p = e->pool[--e->npool];
    if (e->npool < e->pool_low) e->pool_low = e->npool;
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -errno;
  int cap = fcntl(fds[1], F_SETPIPE_SZ, (int)want);
  if (cap < 0) cap = fcntl(fds[1], F_GETPIPE_SZ);
  d->p.r = fds[0];
  d->p.w = fds[1];
  d->p.cap = cap > 0 ? (size_t)cap : 65536;
  return 0;
}

static void pipe_close(pipe_pair_t *p) {
  close(p->r);
  close(p->w);
  p->r = p->w = -1;
}

/* Only an empty pipe goes back to the pool; a pipe still holding bytes is closed. */
static void pipe_put(engine_t *e, dir_t *d) {
  if (d->p.r < 0) return;
  if (d->inpipe == 0 && e->npool < PIPE_POOL_MAX) e->pool[e->npool++] = d->p;
  else pipe_close(&d->p);
  d->p.r = d->p.w = -1;
  d->inpipe = 0;
}

/* The pool shrinks when idle: pipes that stayed pooled through a whole trim period (the bottom
 * of the stack: takes and puts happen at the top) are closed. */
static void pool_trim(engine_t *e, int64_t now) {
  if (now < e->next_trim) return;
  e->next_trim = now + POOL_TRIM_MS;
  int unused = e->pool_low;
  for (int i = 0; i < unused; i++) pipe_close(&e->pool[i]);
  memmove(e->pool, e->pool + unused, (size_t)(e->npool - unused) * sizeof e->pool[0]);
  e->npool -= unused;
  e->pool_low = e->npool;
}

/* ---------- TCP ---------- */

static void note_closed(engine_t *e, group_t *g, uint32_t id, int reason) {
  if (e->nclosed + 3 > e->capclosed) {
    size_t cap = e->capclosed ? e->capclosed * 2 : 96;
    double *n = realloc(e->closed, cap * sizeof(double));
    if (!n) return; /* JS then never learns of this close; only under OOM */
    e->closed = n;
    e->capclosed = cap;
  }
  e->closed[e->nclosed++] = g->id;
  e->closed[e->nclosed++] = id;
  e->closed[e->nclosed++] = reason;
}

/* Closes both sockets. rst: SO_LINGER 0 makes close() send a reset, so that a peer never takes
 * a truncated stream for a complete one. Freeing waits for the end of the epoll batch, which
 * may still hold events pointing at this connection. */
static void conn_close(engine_t *e, conn_t *c, int reason, int rst) {
  if (c->dead) return;
  c->dead = 1;
  for (int k = 0; k < 2; k++) {
    if (rst) {
      struct linger l = { 1, 0 };
      setsockopt(c->fd[k], SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, c->fd[k], NULL);
    close(c->fd[k]);
    pipe_put(e, &c->d[k]);
  }
  group_t *g = c->g;
  if (c->prev) c->prev->next = c->next;
  else g->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->dead_next = e->dead;
  e->dead = c;
  note_closed(e, g, c->id, reason);
}

/* Moves what is readable on src through the direction's pipe to dst, until neither end can make
 * progress. Returns 0 or -errno of a failed read or write. */
static int dir_pump(engine_t *e, conn_t *c, int k, int64_t now) {
  dir_t *d = &c->d[k];
  int src = c->fd[k], dst = c->fd[1 - k];
  for (;;) {
    int progress = 0;
    if (!d->eof) {
      if (d->p.r < 0) {
        int err = pipe_get(e, d, c->g->pipe_bytes);
        if (err) return err;
      }
      if (d->inpipe < d->p.cap) {
        /* With edge-triggered epoll, EAGAIN here means "socket empty" or "pipe out of slots"
         * (each skb fragment takes a slot). The loop retries the read after every drain, so the
         * second case never waits for an EPOLLIN edge that will not come. */
        ssize_t n = splice(src, NULL, d->p.w, NULL, d->p.cap - d->inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          d->inpipe += (size_t)n;
          c->g->ctr[k == 0 ? T_BYTES_IN : T_BYTES_OUT] += (double)n;
          c->last = now;
          progress = 1;
        } else if (n == 0) {
          d->eof = 1;
          progress = 1;
        } else if (errno == EINTR) {
          progress = 1;
        } else if (errno != EAGAIN) {
          return -errno;
        }
      }
    }
    if (d->inpipe > 0) {
      /* A reset dst raises SIGPIPE here; Node ignores SIGPIPE process-wide, so we get EPIPE. */
      ssize_t m = splice(d->p.r, NULL, dst, NULL, d->inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        d->inpipe -= (size_t)m;
        d->blocked = 0;
        c->last = now; /* bytes moving out count as activity too */
        progress = 1;
      } else if (m < 0 && errno == EAGAIN) {
        if (!d->blocked) {
          d->blocked = 1;
          c->g->ctr[k == 0 ? T_PAUSES_CLIENT : T_PAUSES_UPSTREAM] += 1;
        }
      } else if (m < 0 && errno == EINTR) {
        progress = 1;
      } else {
        return m < 0 ? -errno : -EIO;
      }
    }
    if (!progress) break;
  }
  /* Idle connections hold no pipe: a pipe is taken per burst and pooled again when empty. */
  if (d->inpipe == 0) pipe_put(e, d);
  if (d->eof && d->inpipe == 0 && !d->shut) {
    /* Half-close: FIN to dst only after every byte before the EOF went out. */
    shutdown(dst, SHUT_WR);
    d->shut = 1;
  }
  return 0;
}

/* One epoll event on side s of a connection. */
static void tcp_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now) {
  if (c->dead) return;
  int err = 0;
  int all = (ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0;
  /* EPOLLIN on side s feeds direction s; EPOLLOUT on side s drains direction 1-s. */
  if (all || (ev & EPOLLIN)) err = dir_pump(e, c, s, now);
  if (!err && (all || (ev & EPOLLOUT))) err = dir_pump(e, c, 1 - s, now);
  if (err) {
    /* One side failed: deliver what the other direction already holds (best effort, no wait),
     * then reset both, as the JavaScript engine does. */
    for (int k = 0; k < 2; k++) {
      dir_t *d = &c->d[k];
      if (d->inpipe > 0) splice(d->p.r, NULL, c->fd[1 - k], NULL, d->inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    }
    conn_close(e, c, R_ABORTED, 1);
  } else if (c->d[0].shut && c->d[1].shut) {
    conn_close(e, c, R_CLEAN, 0);
  }
}

/* Bytes read from one side and not yet written to the other: a forced close must then reset. */
static int conn_pending(const conn_t *c) { return c->d[0].inpipe > 0 || c->d[1].inpipe > 0; }

static void tcp_add(engine_t *e, conn_t *c) {
  group_t *g = c->g;
  if (g->closed) {
    close(c->fd[0]);
    close(c->fd[1]);
    note_closed(e, g, c->id, R_CLOSED);
    free(c);
    return;
  }
  c->prev = NULL;
  c->next = g->conns;
  if (g->conns) g->conns->prev = c;
  g->conns = c;
  c->last = now_ms();
  for (int k = 0; k < 2; k++) {
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->w[k] };
    /* EPOLL_CTL_ADD reports the current readiness at once: bytes that arrived before the
     * handoff are not missed. */
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->fd[k], &ev) < 0) {
      if (k == 1) epoll_ctl(e->epfd, EPOLL_CTL_DEL, c->fd[0], NULL);
      /* conn_close's EPOLL_CTL_DEL of an unregistered fd fails harmlessly. */
      conn_close(e, c, R_ABORTED, 1);
      return;
    }
  }
}

/* ---------- UDP ---------- */

static int addr_bytes(const struct sockaddr_storage *ss, uint8_t out[16], int *family) {
  if (ss->ss_family == AF_INET) {
    memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    *family = 4;
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  }
  memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
  *family = 6;
  return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static int prefix_match(const uint8_t *a, const uint8_t *b, int bits) {
  int full = bits / 8, rest = bits % 8;
  if (memcmp(a, b, (size_t)full) != 0) return 0;
  if (rest == 0) return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

/* Families never mix (access-list.ts): an IPv4 or IPv4-mapped client matches only IPv4 rules
 * (JS turned rules written as mapped IPv6 into IPv4 ones), a plain IPv6 client only IPv6 rules. */
static int acl_hit(const acl_entry_t *list, int n, const uint8_t *addr, int family) {
  static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  int v4 = family == 4;
  if (!v4 && memcmp(addr, mapped, 12) == 0) {
    addr += 12;
    v4 = 1;
  }
  for (int i = 0; i < n; i++) {
    if ((list[i].family == 4) == v4 && prefix_match(addr, list[i].addr, list[i].prefix)) return 1;
  }
  return 0;
}

static int udp_allowed(group_t *g, const struct sockaddr_storage *ss) {
  if (g->nallow == 0 && g->ndeny == 0) return 1;
  uint8_t a[16];
  int fam;
  addr_bytes(ss, a, &fam);
  if (acl_hit(g->deny, g->ndeny, a, fam)) return 0;
  return g->nallow == 0 || acl_hit(g->allow, g->nallow, a, fam);
}

static uint64_t addr_hash(const struct sockaddr_storage *ss) {
  uint8_t a[16];
  int fam;
  uint64_t h = 1469598103934665603ull;
  int port = addr_bytes(ss, a, &fam);
  for (int i = 0; i < (fam == 4 ? 4 : 16); i++) h = (h ^ a[i]) * 1099511628211ull;
  return (h ^ (uint64_t)port) * 1099511628211ull;
}

static int addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static flow_t *flow_find(group_t *g, const struct sockaddr_storage *ss) {
  if (!g->table) return NULL;
  for (flow_t *f = g->table[addr_hash(ss) & (g->buckets - 1)]; f; f = f->hnext)
    if (addr_equal(&f->client, ss)) return f;
  return NULL;
}

/* Keeps chains short: the table doubles when flows outnumber buckets. */
static int table_grow(group_t *g) {
  size_t nb = g->buckets ? g->buckets * 2 : 64;
  flow_t **t = calloc(nb, sizeof *t);
  if (!t) return -1;
  for (flow_t *f = g->flows; f; f = f->next) {
    size_t b = addr_hash(&f->client) & (nb - 1);
    f->hnext = t[b];
    t[b] = f;
  }
  free(g->table);
  g->table = t;
  g->buckets = nb;
  return 0;
}

/* The quota of a mapping (found by its counters), made on first use. The list is taken by the
 * JS thread (new groups) and the engine thread (closes): under the engine mutex. */
/* One fd from the process budget (fd-limit.ts: cell 0 for the process, and the worker's own). */
static int budget_take(group_t *g) {
  if (!g->budget) return 1;
  if (__atomic_add_fetch(&g->budget[0], 1, __ATOMIC_RELAXED) > g->budget_limit) {
    __atomic_sub_fetch(&g->budget[0], 1, __ATOMIC_RELAXED);
    return 0;
  }
  if (g->budget_own > 0) __atomic_add_fetch(&g->budget[g->budget_own], 1, __ATOMIC_RELAXED);
  return 1;
}

static void budget_give(group_t *g) {
  if (!g->budget) return;
  __atomic_sub_fetch(&g->budget[0], 1, __ATOMIC_RELAXED);
  if (g->budget_own > 0) __atomic_sub_fetch(&g->budget[g->budget_own], 1, __ATOMIC_RELAXED);
}

static quota_t *quota_get(engine_t *e, double *ctr) {
  pthread_mutex_lock(&e->mu);
  quota_t *q = e->quotas;
  while (q && q->ctr != ctr) q = q->next;
  if (q) q->refs++;
  else if ((q = calloc(1, sizeof *q))) {
    q->ctr = ctr;
    q->refs = 1;
    q->next = e->quotas;
    e->quotas = q;
  }
  pthread_mutex_unlock(&e->mu);
  return q;
}

static void quota_put(engine_t *e, quota_t *q) {
  if (!q) return;
  pthread_mutex_lock(&e->mu);
  int last = --q->refs == 0;
  if (last) for (quota_t **pp = &e->quotas; *pp; pp = &(*pp)->next) if (*pp == q) { *pp = q->next; break; }
  pthread_mutex_unlock(&e->mu);
  if (!last) return;
  for (int i = 0; i < QUOTA_BUCKETS; i++) while (q->b[i]) { src_count_t *s = q->b[i]; q->b[i] = s->next; free(s); }
  free(q);
}

/* The count of a client address (as 16 bytes, IPv4 mapped), made on first use when `make`. */
static src_count_t *src_slot(quota_t *q, const struct sockaddr_storage *ss, int make) {
  uint8_t a[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  uint8_t raw[16];
  int fam;
  addr_bytes(ss, raw, &fam);
  memcpy(fam == 4 ? a + 12 : a, raw, fam == 4 ? 4 : 16);
  uint32_t h = 2166136261u;
  for (int i = 0; i < 16; i++) h = (h ^ a[i]) * 16777619u;
  src_count_t **head = &q->b[h % QUOTA_BUCKETS];
  for (src_count_t *s = *head; s; s = s->next) if (memcmp(s->addr, a, 16) == 0) return s;
  if (!make) return NULL;
  src_count_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  memcpy(s->addr, a, 16);
  s->next = *head;
  *head = s;
  return s;
}

/* One flow fewer for a client address; a count of zero is freed. */
static void src_release(quota_t *q, const struct sockaddr_storage *ss) {
  src_count_t *s = q ? src_slot(q, ss, 0) : NULL;
  if (!s || --s->n > 0) return;
  uint32_t h = 2166136261u;
  for (int i = 0; i < 16; i++) h = (h ^ s->addr[i]) * 16777619u;
  for (src_count_t **pp = &q->b[h % QUOTA_BUCKETS]; *pp; pp = &(*pp)->next) if (*pp == s) { *pp = s->next; break; }
  free(s);
}

static void flow_close(engine_t *e, flow_t *f) {
  group_t *g = f->g;
  flow_t **pp = &g->table[addr_hash(&f->client) & (g->buckets - 1)];
  while (*pp != f) pp = &(*pp)->hnext;
  *pp = f->hnext;
  if (f->prev) f->prev->next = f->next;
  else g->flows = f->next;
  if (f->next) f->next->prev = f->prev;
  epoll_ctl(e->epfd, EPOLL_CTL_DEL, f->fd, NULL);
  close(f->fd);
  budget_give(g);
  src_release(g->quota, &f->client);
  g->nflows--;
  g->ctr[U_FLOWS_ACTIVE] -= 1;
  free(f);
}

/* A flow's own connected socket: the connect filters replies from anyone but the target. */
static flow_t *flow_open(engine_t *e, group_t *g, const struct sockaddr_storage *ss, socklen_t len, int64_t now) {
  if ((size_t)g->nflows >= g->buckets && table_grow(g) < 0) return NULL;
  src_count_t *src = g->quota ? src_slot(g->quota, ss, 1) : NULL;
  if (!src) return NULL;
  /* One fd out of the process budget, shared with every other mapping and engine. */
  if (!budget_take(g)) {
    src->n++;
    src_release(g->quota, ss);
    return NULL;
  }
  src->n++;
  int fd = socket(g->target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    budget_give(g);
    src_release(g->quota, ss);
    return NULL;
  }
  int sz = UDP_FLOW_BUFFER;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  flow_t *f = calloc(1, sizeof *f);
  if (!f || connect(fd, (struct sockaddr *)&g->target, g->tlen) < 0) {
    free(f);
    close(fd);
    budget_give(g);
    src_release(g->quota, ss);
    return NULL;
  }
  f->w.kind = W_UDP_FLOW;
  f->w.owner = f;
  f->g = g;
  f->fd = fd;
  memcpy(&f->client, ss, len);
  f->clen = len;
  f->last = now;
  /* Level-triggered: a busy flow is served one batch per wakeup, so others are not starved. */
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &f->w };
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    close(fd);
    free(f);
    budget_give(g);
    src_release(g->quota, ss);
    return NULL;
  }
  size_t b = addr_hash(ss) & (g->buckets - 1);
  f->hnext = g->table[b];
  g->table[b] = f;
  f->next = g->flows;
  if (g->flows) g->flows->prev = f;
  g->flows = f;
  g->nflows++;
  g->ctr[U_FLOWS_CREATED] += 1;
  g->ctr[U_FLOWS_ACTIVE] += 1;
  return f;
}

/* The destination address of a received datagram (IP_PKTINFO / IPV6_PKTINFO). */
static void take_pktinfo(flow_t *f, struct msghdr *h) {
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
    if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
      struct in_pktinfo pi;
      memcpy(&pi, CMSG_DATA(cm), sizeof pi);
      memset(&f->dst.v4, 0, sizeof f->dst.v4);
      /* Reply from the local address the kernel says the datagram was for: the address the
       * client targeted for unicast, an address of the interface for a broadcast or multicast
       * destination (which is never a valid source). ifindex 0 lets routing pick the device. */
      f->dst.v4.ipi_spec_dst = pi.ipi_spec_dst;
      f->has_dst = 1;
    } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
      struct in6_pktinfo pi;
      memcpy(&pi, CMSG_DATA(cm), sizeof pi);
      memset(&f->dst.v6, 0, sizeof f->dst.v6);
      f->dst.v6.ipi6_addr = pi.ipi6_addr;
      /* A multicast destination is no valid source: let the kernel choose. */
      f->has_dst = !IN6_IS_ADDR_MULTICAST(&pi.ipi6_addr);
    }
  }
}

#define CTRL_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
#define GSO_CTRL_SPACE (CTRL_SPACE + CMSG_SPACE(sizeof(uint16_t)))

/* The thread's batch state: headers, addresses, control data and 32 x 64 KiB of datagram
 * buffers (2 MiB of address space; pages are touched only as far as datagrams reach), plus the
 * GSO messages built over the same iovecs. */
typedef struct udp_io {
  struct mmsghdr m[UDP_BATCH];
  struct iovec iov[UDP_BATCH];
  struct sockaddr_storage from[UDP_BATCH];
  char ctrl[UDP_BATCH][CTRL_SPACE];
  struct mmsghdr gm[UDP_BATCH];
  char gctrl[UDP_BATCH][GSO_CTRL_SPACE];
  int segs[UDP_BATCH];
  uint8_t buf[(size_t)UDP_BATCH * UDP_SLOT];
} udp_io_t;

static udp_io_t *udp_buffers(engine_t *e) {
  if (!e->io) e->io = malloc(sizeof *e->io);
  return e->io;
}

/* Errors with which a kernel or device refuses UDP_SEGMENT (rather than the datagram). */
static int gso_refused(int err) { return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP; }

/* Sends messages [0, n) on fd; segs[i] datagrams each (NULL: one). What the socket cannot take
 * now is dropped and counted (UDP semantics). Returns -1 with *failed set when the kernel
 * refuses a GSO message, so that the caller can resend plainly; otherwise 0. */
static int send_batch(group_t *g, int fd, struct mmsghdr *m, int n, const int *segs, int *failed) {
  int i = 0, retried = 0;
  while (i < n) {
    int r = sendmmsg(fd, m + i, (unsigned)(n - i), MSG_DONTWAIT);
    if (r > 0) {
      i += r;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN) {
      for (; i < n; i++) g->ctr[U_DROP_QUEUE] += segs ? segs[i] : 1;
      return 0;
    } else if (errno == ECONNREFUSED && !retried) {
      /* A pending ICMP port unreachable, reported once; the flow lives on (29.5 semantics). */
      g->ctr[U_REFUSED] += 1;
      retried = 1;
    } else if (segs && segs[i] > 1 && gso_refused(errno)) {
      *failed = i;
      return -1;
    } else {
      if (errno == ECONNREFUSED) g->ctr[U_REFUSED] += 1;
      else g->ctr[U_DROP_SEND] += segs ? segs[i] : 1;
      i++;
      retried = 0;
    }
  }
  return 0;
}

/* Sends datagrams m[0, n), all to one destination, whose iovecs are contiguous. Runs of equal
 * sizes (the last may be shorter) go as one UDP_SEGMENT (GSO) message: one pass through the
 * stack, cut back into the very same datagrams before delivery. Only for datagrams that fit any
 * path MTU; if the kernel refuses GSO, the group stops using it and the rest goes plainly. */
static void send_datagrams(engine_t *e, group_t *g, int fd, struct mmsghdr *m, int n) {
  udp_io_t *io = e->io;
  if (g->no_gso || n < 2) {
    send_batch(g, fd, m, n, NULL, NULL);
    return;
  }
  int k = 0;
  for (int i = 0; i < n;) {
    size_t gso = m[i].msg_hdr.msg_iov[0].iov_len, total = gso;
    int j = i + 1;
    if (gso > 0 && gso <= GSO_MAX_SEGMENT) {
      while (j < n && j - i < GSO_MAX_SEGS) {
        size_t len = m[j].msg_hdr.msg_iov[0].iov_len;
        if (len == 0 || len > gso || total + len > GSO_MAX_BYTES) break;
        total += len;
        j++;
        if (len < gso) break;
      }
    }
    struct msghdr *h = &io->gm[k].msg_hdr;
    *h = m[i].msg_hdr;
    h->msg_iovlen = (size_t)(j - i);
    if (j - i > 1) {
      char *c = io->gctrl[k];
      size_t used = 0;
      if (m[i].msg_hdr.msg_controllen) {
        memcpy(c, m[i].msg_hdr.msg_control, m[i].msg_hdr.msg_controllen);
        used = m[i].msg_hdr.msg_controllen;
      }
      struct cmsghdr *cm = (struct cmsghdr *)(c + used);
      uint16_t seg = (uint16_t)gso;
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof seg);
      memcpy(CMSG_DATA(cm), &seg, sizeof seg);
      h->msg_control = c;
      h->msg_controllen = used + CMSG_SPACE(sizeof seg);
    }
    io->segs[k++] = j - i;
    i = j;
  }
  int failed = 0;
  if (send_batch(g, fd, io->gm, k, io->segs, &failed) < 0) {
    int done = 0;
    for (int x = 0; x < failed; x++) done += io->segs[x];
    g->no_gso = 1;
    send_batch(g, fd, m + done, n - done, NULL, NULL);
  }
}

/* One recvmmsg into the batch buffers; with_source: also each sender's address and its
 * destination address (IP_PKTINFO), which only the listener needs. Returns its result. */
static int recv_batch(udp_io_t *io, int fd, int with_source) {
  for (int i = 0; i < UDP_BATCH; i++) {
    io->iov[i].iov_base = io->buf + (size_t)i * UDP_SLOT;
    io->iov[i].iov_len = UDP_SLOT;
    struct msghdr *h = &io->m[i].msg_hdr;
    memset(h, 0, sizeof *h);
    h->msg_iov = &io->iov[i];
    h->msg_iovlen = 1;
    if (with_source) {
      h->msg_name = &io->from[i];
      h->msg_namelen = sizeof io->from[i];
      h->msg_control = io->ctrl[i];
      h->msg_controllen = CTRL_SPACE;
    }
  }
  return recvmmsg(fd, io->m, UDP_BATCH, MSG_DONTWAIT, NULL);
}

/* Client datagrams: one recvmmsg, then one sendmmsg per run of datagrams of the same flow. */
static int udp_listener_batch(engine_t *e, group_t *g, int64_t now) {
  udp_io_t *io = udp_buffers(e);
  if (!io) return -1;
  int n = recv_batch(io, g->lfd, 1);
  if (n <= 0) return n;
  flow_t *flows[UDP_BATCH];
  for (int i = 0; i < n; i++) {
    struct sockaddr_storage *from = &io->from[i];
    flow_t *f = flow_find(g, from);
    if (!f) {
      if (g->draining) { flows[i] = NULL; continue; }
      if (!udp_allowed(g, from)) { g->ctr[U_DROP_BLOCKED] += 1; flows[i] = NULL; continue; }
      /* The cap is per mapping: every port of a range shares its counters (M3); one client
       * address may hold only its share of it (L7). */
      if (g->ctr[U_FLOWS_ACTIVE] >= g->max_flows) { g->ctr[U_DROP_LIMIT] += 1; flows[i] = NULL; continue; }
      src_count_t *sc = src_slot(g->quota, from, 0);
      if (sc && sc->n >= g->per_source) { g->ctr[U_DROP_LIMIT] += 1; flows[i] = NULL; continue; }
      f = flow_open(e, g, from, io->m[i].msg_hdr.msg_namelen, now);
      if (!f) { g->ctr[U_DROP_SEND] += 1; flows[i] = NULL; continue; }
    }
    if (g->wildcard) take_pktinfo(f, &io->m[i].msg_hdr);
    f->last = now;
    flows[i] = f;
    g->ctr[U_DGRAMS_IN] += 1;
    g->ctr[U_BYTES_IN] += io->m[i].msg_len;
  }
  /* Reuse the receive headers as send headers: connected sockets need no address. */
  for (int i = 0; i < n;) {
    if (!flows[i]) { i++; continue; }
    int j = i;
    while (j < n && flows[j] == flows[i]) {
      struct msghdr *h = &io->m[j].msg_hdr;
      io->iov[j].iov_len = io->m[j].msg_len;
      h->msg_name = NULL;
      h->msg_namelen = 0;
      h->msg_control = NULL;
      h->msg_controllen = 0;
      j++;
    }
    send_datagrams(e, g, flows[i]->fd, io->m + i, j - i);
    i = j;
  }
  return n;
}

/* Level-triggered: a few full batches per wakeup, then other sockets get their turn. */
static void udp_listener_event(engine_t *e, group_t *g, int64_t now) {
  for (int r = 0; r < UDP_ROUNDS && udp_listener_batch(e, g, now) == UDP_BATCH; r++) {}
}

/* Target replies: back to the client from the listening socket, from the address it targeted. */
static int udp_flow_batch(engine_t *e, flow_t *f, int64_t now) {
  group_t *g = f->g;
  udp_io_t *io = udp_buffers(e);
  if (!io) return -1;
  int n = recv_batch(io, f->fd, 0);
  if (n < 0) {
    if (errno == ECONNREFUSED) g->ctr[U_REFUSED] += 1;
    return n;
  }
  f->last = now;
  for (int i = 0; i < n; i++) {
    struct msghdr *h = &io->m[i].msg_hdr;
    g->ctr[U_DGRAMS_OUT] += 1;
    g->ctr[U_BYTES_OUT] += io->m[i].msg_len;
    io->iov[i].iov_len = io->m[i].msg_len;
    h->msg_name = &f->client;
    h->msg_namelen = f->clen;
    if (f->has_dst) {
      h->msg_control = io->ctrl[i];
      struct cmsghdr *cm = (struct cmsghdr *)io->ctrl[i];
      if (g->lfamily == AF_INET) {
        h->msg_controllen = CMSG_SPACE(sizeof(struct in_pktinfo));
        cm->cmsg_level = IPPROTO_IP;
        cm->cmsg_type = IP_PKTINFO;
        cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        memcpy(CMSG_DATA(cm), &f->dst.v4, sizeof f->dst.v4);
      } else {
        h->msg_controllen = CMSG_SPACE(sizeof(struct in6_pktinfo));
        cm->cmsg_level = IPPROTO_IPV6;
        cm->cmsg_type = IPV6_PKTINFO;
        cm->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
        memcpy(CMSG_DATA(cm), &f->dst.v6, sizeof f->dst.v6);
      }
    }
  }
  if (n > 0) send_datagrams(e, g, g->lfd, io->m, n);
  return n;
}

static void udp_flow_event(engine_t *e, flow_t *f, int64_t now) {
  for (int r = 0; r < UDP_ROUNDS && udp_flow_batch(e, f, now) == UDP_BATCH; r++) {}
}


/* ---------- the thread ---------- */

static void group_close(engine_t *e, group_t *g) {
  g->closed = 1;
  while (g->conns) conn_close(e, g->conns, R_CLOSED, conn_pending(g->conns));
  while (g->flows) flow_close(e, g->flows);
  if (g->kind == W_UDP_LISTENER && g->lfd >= 0) {
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
    close(g->lfd);
    g->lfd = -1;
  }
  quota_put(e, g->quota);
  g->quota = NULL;
}

/* Idle and linger timeouts, and UDP flow expiry: one walk per group per sweep period, no timer
 * per connection. */
static void sweep(engine_t *e, group_t *g, int64_t now) {
  if (g->closed || now < g->next_sweep) return;
  g->next_sweep = now + g->sweep_ms;
  for (conn_t *c = g->conns, *next; c; c = next) {
    next = c->next;
    int64_t idle = now - c->last;
    if (g->idle_ms > 0 && idle >= g->idle_ms) conn_close(e, c, R_IDLE, conn_pending(c));
    else if (g->linger_ms > 0 && (c->d[0].eof || c->d[1].eof) && idle >= g->linger_ms) conn_close(e, c, R_LINGER, conn_pending(c));
  }
  for (flow_t *f = g->flows, *next; f; f = next) {
    next = f->next;
    if (now - f->last >= g->idle_ms) {
      g->ctr[U_FLOWS_EXPIRED] += 1;
      flow_close(e, f);
    }
  }
}

static void run_commands(engine_t *e) {
  uint64_t v;
  while (read(e->evfd, &v, sizeof v) < 0 && errno == EINTR) {}
  pthread_mutex_lock(&e->mu);
  cmd_t *q = e->cmds;
  e->cmds = NULL;
  e->cmds_tail = &e->cmds;
  pthread_mutex_unlock(&e->mu);
  while (q) {
    cmd_t *next = q->next;
    if (q->op == C_ADD_CONN) tcp_add(e, q->c);
    else if (q->op == C_CLOSE_GROUP) {
      group_close(e, q->g);
      /* JS waits for this: the port must be free when groupClose returns. */
      pthread_mutex_lock(&e->mu);
      q->g->close_done = 1;
      pthread_cond_broadcast(&e->closed_cv);
      pthread_mutex_unlock(&e->mu);
    }
    free(q);
    q = next;
  }
}

static void flush(engine_t *e) {
  while (e->dead) {
    conn_t *c = e->dead;
    e->dead = c->dead_next;
    free(c);
  }
  if (e->nclosed == 0) return;
  double *batch = malloc(sizeof(double) * (e->nclosed + 1));
  if (!batch) return;
  batch[0] = (double)e->nclosed;
  memcpy(batch + 1, e->closed, sizeof(double) * e->nclosed);
  e->nclosed = 0;
  /* One call per epoll batch, after every free: JS may act on it at once. */
  if (napi_call_threadsafe_function(e->tsfn, batch, napi_tsfn_nonblocking) != napi_ok) free(batch);
}

static void *thread_main(void *arg) {
  engine_t *e = arg;
  struct epoll_event evs[EVENTS_PER_WAIT];
  /* Signals belong to Node's threads. A SIGPIPE from splicing into a reset socket stays pending
   * here, harmlessly; the splice returns EPIPE. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  while (!e->stop) {
    pthread_mutex_lock(&e->mu);
    group_t *groups = e->groups;
    pthread_mutex_unlock(&e->mu);
    int64_t tick = MAX_TICK_MS;
    for (group_t *g = groups; g; g = g->next) if (g->sweep_ms < tick) tick = g->sweep_ms;
    int n = epoll_wait(e->epfd, evs, EVENTS_PER_WAIT, (int)tick);
    int64_t now = now_ms();
    int commands = 0;
    for (int i = 0; i < n; i++) {
      watch_t *w = evs[i].data.ptr;
      if (w->kind == W_EVENT) commands = 1;
      else if (w->kind == W_TCP) tcp_event(e, w->owner, w->side, evs[i].events, now);
      else if (w->kind == W_UDP_LISTENER) { if (!((group_t *)w->owner)->closed) udp_listener_event(e, w->owner, now); }
      else if (w->kind == W_UDP_FLOW) udp_flow_event(e, w->owner, now);
      /* A flow closed earlier in this batch is only ever closed by a command or the sweep,
       * which run after the batch, so W_UDP_FLOW pointers here are live. */
    }
    if (commands) run_commands(e);
    for (group_t *g = groups; g; g = g->next) sweep(e, g, now);
    pool_trim(e, now);
    flush(e);
  }
  for (group_t *g = e->groups; g; g = g->next) group_close(e, g);
  e->nclosed = 0; /* the environment is going away: nobody to tell */
  flush(e);
  return NULL;
}

/* ---------- N-API ---------- */

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, "UPROXY_NATIVE", #call " failed"); return NULL; } } while (0)

static napi_value throw_errno(napi_env env, int err, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, "UPROXY_NATIVE", msg);
  return NULL;
}

static engine_t *engine_of(napi_env env) {
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  if (!e) napi_throw_error(env, "UPROXY_NATIVE", "native engine not initialised");
  return e;
}

/* Queues a command for the thread and wakes it; -ENOMEM if it cannot. */
static int post(engine_t *e, int op, group_t *g, conn_t *c) {
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (!cmd) return -ENOMEM;
  cmd->op = op;
  cmd->g = g;
  cmd->c = c;
  pthread_mutex_lock(&e->mu);
  *e->cmds_tail = cmd;
  e->cmds_tail = &cmd->next;
  pthread_mutex_unlock(&e->mu);
  uint64_t one = 1;
  while (write(e->evfd, &one, sizeof one) < 0 && errno == EINTR) {}
  return 0;
}

/* Live connections and open UDP groups keep the event loop alive, as their sockets did. */
static void hold(napi_env env, engine_t *e, int delta) {
  e->refs += delta;
  if (e->refs > 0 && !e->refed) { napi_ref_threadsafe_function(env, e->tsfn); e->refed = 1; }
  else if (e->refs <= 0 && e->refed) { napi_unref_threadsafe_function(env, e->tsfn); e->refed = 0; }
}

static void call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  engine_t *e = ctx;
  double *batch = data;
  if (env != NULL) {
    size_t n = (size_t)batch[0];
    napi_value arr, v, undef;
    napi_create_array_with_length(env, n, &arr);
    for (size_t i = 0; i < n; i++) {
      napi_create_double(env, batch[i + 1], &v);
      napi_set_element(env, arr, (uint32_t)i, v);
    }
    hold(env, e, -(int)(n / 3));
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, cb, 1, &arr, NULL);
  }
  free(batch);
}

/* Stops and joins the thread, which closes every connection, flow and listener it holds. */
static void engine_stop(engine_t *e) {
  if (!e->started) return;
  e->started = 0;
  e->stop = 1;
  uint64_t one = 1;
  while (write(e->evfd, &one, sizeof one) < 0 && errno == EINTR) {}
  pthread_join(e->thread, NULL);
  napi_release_threadsafe_function(e->tsfn, napi_tsfn_abort);
}

static void engine_teardown(void *arg) {
  engine_t *e = arg;
  engine_stop(e);
  for (int i = 0; i < e->npool; i++) pipe_close(&e->pool[i]);
  while (e->cmds) { cmd_t *c = e->cmds; e->cmds = c->next; if (c->c) { close(c->c->fd[0]); close(c->c->fd[1]); free(c->c); } free(c); }
  while (e->groups) {
    group_t *g = e->groups;
    e->groups = g->next;
    if (g->lfd >= 0) close(g->lfd);
    free(g->table);
    free(g->allow);
    free(g->deny);
    free(g);
  }
  close(e->epfd);
  close(e->evfd);
  free(e->closed);
  free(e->io);
  while (e->quotas) { e->quotas->refs = 1; quota_put(e, e->quotas); }
  pthread_cond_destroy(&e->closed_cv);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  if (e) return NULL;
  e = calloc(1, sizeof *e);
  if (!e) return throw_errno(env, ENOMEM, "native engine");
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (e->epfd < 0 || e->evfd < 0) {
    int err = errno;
    if (e->epfd >= 0) close(e->epfd);
    if (e->evfd >= 0) close(e->evfd);
    free(e);
    return throw_errno(env, err, "epoll");
  }
  e->evw.kind = W_EVENT;
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &e->evw };
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev) < 0) {
    int err = errno;
    close(e->epfd);
    close(e->evfd);
    free(e);
    return throw_errno(env, err, "epoll_ctl");
  }
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->closed_cv, NULL);
  e->cmds_tail = &e->cmds;
  CHECK(napi_create_string_utf8(env, "userland-proxy native engine", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, e, call_js, &e->tsfn));
  napi_unref_threadsafe_function(env, e->tsfn);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, THREAD_STACK);
  if (pthread_create(&e->thread, &attr, thread_main, e) != 0) {
    pthread_attr_destroy(&attr);
    napi_release_threadsafe_function(e->tsfn, napi_tsfn_abort);
    close(e->epfd);
    close(e->evfd);
    free(e);
    return throw_errno(env, EAGAIN, "native engine thread");
  }
  pthread_attr_destroy(&attr);
  e->started = 1;
  CHECK(napi_set_instance_data(env, e, NULL, NULL));
  /* Stop and join the thread when this environment (process or worker) goes away. */
  CHECK(napi_add_env_cleanup_hook(env, engine_teardown, e));
  return NULL;
}

static int get_i64(napi_env env, napi_value v, int64_t *out) { return napi_get_value_int64(env, v, out) == napi_ok ? 0 : -1; }

static group_t *new_group(napi_env env, engine_t *e, napi_value id, napi_value counters, int kind, size_t need) {
  int64_t gid;
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (get_i64(env, id, &gid) < 0 ||
      napi_get_typedarray_info(env, counters, &type, &len, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || len < need) {
    napi_throw_type_error(env, "UPROXY_NATIVE", "bad group arguments");
    return NULL;
  }
  group_t *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->id = (int)gid;
  g->kind = kind;
  g->ctr = data;
  g->lfd = -1;
  napi_create_reference(env, counters, 1, &g->ctr_ref); /* keeps the counters' memory alive */
  return g;
}

static void publish_group(engine_t *e, group_t *g) {
  pthread_mutex_lock(&e->mu);
  g->next = e->groups;
  e->groups = g;
  pthread_mutex_unlock(&e->mu);
}

static napi_value wrap_group(napi_env env, group_t *g) {
  napi_value ext;
  if (napi_create_external(env, g, NULL, NULL, &ext) != napi_ok) return NULL;
  return ext;
}

static group_t *unwrap_group(napi_env env, napi_value v) {
  group_t *g = NULL;
  if (napi_get_value_external(env, v, (void **)&g) != napi_ok || !g) napi_throw_type_error(env, "UPROXY_NATIVE", "not a group");
  return g;
}

static int64_t sweep_period(int64_t a, int64_t b) {
  int64_t p = MAX_TICK_MS;
  if (a > 0 && a / 4 < p) p = a / 4;
  if (b > 0 && b / 4 < p) p = b / 4;
  return p < 25 ? 25 : p;
}

static napi_value js_tcp_group(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = engine_of(env);
  if (!e) return NULL;
  int64_t idle, linger, pipe_bytes;
  if (get_i64(env, argv[2], &idle) < 0 || get_i64(env, argv[3], &linger) < 0 || get_i64(env, argv[4], &pipe_bytes) < 0)
    return throw_errno(env, EINVAL, "tcpGroup");
  group_t *g = new_group(env, e, argv[0], argv[1], W_TCP, T_COUNT);
  if (!g) return NULL;
  g->idle_ms = idle;
  g->linger_ms = linger;
  g->sweep_ms = sweep_period(idle, linger);
  g->pipe_bytes = (size_t)pipe_bytes;
  publish_group(e, g);
  return wrap_group(env, g);
}

static napi_value js_tcp_adopt(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = engine_of(env);
  group_t *g = e ? unwrap_group(env, argv[0]) : NULL;
  int64_t id, cfd, tfd;
  if (!g || get_i64(env, argv[1], &id) < 0 || get_i64(env, argv[2], &cfd) < 0 || get_i64(env, argv[3], &tfd) < 0)
    return e && g ? throw_errno(env, EINVAL, "tcpAdopt") : NULL;
  conn_t *c = calloc(1, sizeof *c);
  if (!c) return throw_errno(env, ENOMEM, "tcpAdopt");
  /* Our own references to both sockets; JS closes its fds right after. */
  c->fd[0] = fcntl((int)cfd, F_DUPFD_CLOEXEC, 0);
  c->fd[1] = c->fd[0] < 0 ? -1 : fcntl((int)tfd, F_DUPFD_CLOEXEC, 0);
  if (c->fd[1] < 0) {
    int err = errno;
    if (c->fd[0] >= 0) close(c->fd[0]);
    free(c);
    return throw_errno(env, err, "dup");
  }
  c->g = g;
  c->id = (uint32_t)id;
  for (int k = 0; k < 2; k++) {
    c->w[k].kind = W_TCP;
    c->w[k].side = k;
    c->w[k].owner = c;
    c->d[k].p.r = c->d[k].p.w = -1;
  }
  if (post(e, C_ADD_CONN, g, c) < 0) {
    close(c->fd[0]);
    close(c->fd[1]);
    free(c);
    return throw_errno(env, ENOMEM, "tcpAdopt");
  }
  hold(env, e, 1);
  return NULL;
}

/* acl: Uint8Array of ACL_RECORD_BYTES entries [family 4|6, prefix, 16 address bytes]. */
static int read_acl(napi_env env, napi_value v, acl_entry_t **out, int *n) {
  void *data;
  size_t len;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  *out = NULL;
  *n = 0;
  if (t == napi_undefined || t == napi_null) return 0;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok || len % ACL_RECORD_BYTES != 0) return -1;
  if (len == 0) return 0;
  *out = malloc(len / ACL_RECORD_BYTES * sizeof(acl_entry_t));
  if (!*out) return -1;
  for (size_t i = 0; i < len / ACL_RECORD_BYTES; i++) {
    const uint8_t *p = (const uint8_t *)data + i * ACL_RECORD_BYTES;
    (*out)[i].family = p[0];
    (*out)[i].prefix = p[1];
    memcpy((*out)[i].addr, p + 2, 16);
  }
  *n = (int)(len / ACL_RECORD_BYTES);
  return 0;
}

/* udpGroup(id, counters, listenerFd, targetBytes, targetPort, idleMs, maxFlows, allow, deny,
 *          wildcard, perSource, budget: Int32Array | null, budgetLimit, budgetOwn, scopeId)
 * Everything is set up here, on the JS thread, and the listener is registered last: a failure
 * throws (the mapping then fails to start) instead of leaving a port that nobody serves. */
static napi_value js_udp_group(napi_env env, napi_callback_info info) {
  size_t argc = 15;
  napi_value argv[15];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = engine_of(env);
  if (!e) return NULL;
  int64_t lfd, port, idle, max_flows, per_source, budget_limit, budget_own, scope;
  bool wildcard;
  void *taddr;
  size_t tlen;
  if (argc < 15 || get_i64(env, argv[2], &lfd) < 0 || napi_get_buffer_info(env, argv[3], &taddr, &tlen) != napi_ok ||
      (tlen != 4 && tlen != 16) || get_i64(env, argv[4], &port) < 0 || get_i64(env, argv[5], &idle) < 0 ||
      get_i64(env, argv[6], &max_flows) < 0 || napi_get_value_bool(env, argv[9], &wildcard) != napi_ok ||
      get_i64(env, argv[10], &per_source) < 0 || get_i64(env, argv[12], &budget_limit) < 0 || get_i64(env, argv[13], &budget_own) < 0 ||
      get_i64(env, argv[14], &scope) < 0)
    return throw_errno(env, EINVAL, "udpGroup");
  int32_t *budget = NULL;
  napi_valuetype bt;
  napi_typeof(env, argv[11], &bt);
  if (bt != napi_null && bt != napi_undefined) {
    napi_typedarray_type type;
    size_t blen;
    void *bdata;
    if (napi_get_typedarray_info(env, argv[11], &type, &blen, &bdata, NULL, NULL) != napi_ok || type != napi_int32_array ||
        budget_own < 0 || (size_t)budget_own >= blen)
      return throw_errno(env, EINVAL, "udpGroup budget");
    budget = bdata;
  }
  group_t *g = new_group(env, e, argv[0], argv[1], W_UDP_LISTENER, U_COUNT);
  if (!g) return NULL;
  if (read_acl(env, argv[7], &g->allow, &g->nallow) < 0 || read_acl(env, argv[8], &g->deny, &g->ndeny) < 0) {
    free(g->allow);
    free(g);
    return throw_errno(env, EINVAL, "udpGroup acl");
  }
  struct sockaddr_storage local;
  socklen_t llen = sizeof local;
  g->lfd = fcntl((int)lfd, F_DUPFD_CLOEXEC, 0);
  if (g->lfd < 0 || getsockname(g->lfd, (struct sockaddr *)&local, &llen) < 0) {
    int err = errno;
    if (g->lfd >= 0) close(g->lfd);
    free(g->allow);
    free(g->deny);
    free(g);
    return throw_errno(env, err, "udpGroup listener");
  }
  g->lfamily = local.ss_family;
  g->wildcard = wildcard;
  if (tlen == 4) {
    struct sockaddr_in *t = (struct sockaddr_in *)&g->target;
    t->sin_family = AF_INET;
    t->sin_port = htons((uint16_t)port);
    memcpy(&t->sin_addr, taddr, 4);
    g->tlen = sizeof *t;
  } else {
    struct sockaddr_in6 *t = (struct sockaddr_in6 *)&g->target;
    t->sin6_family = AF_INET6;
    t->sin6_port = htons((uint16_t)port);
    memcpy(&t->sin6_addr, taddr, 16);
    t->sin6_scope_id = (uint32_t)scope; /* a link-local target's interface (its %zone) */
    g->tlen = sizeof *t;
  }
  g->idle_ms = idle;
  g->max_flows = (int)max_flows;
  g->per_source = per_source > 0 ? (int)per_source : 1;
  g->budget = budget;
  g->budget_limit = budget_limit;
  g->budget_own = (int)budget_own;
  if (budget) napi_create_reference(env, argv[11], 1, &g->budget_ref);
  int64_t p = idle / 10;
  g->sweep_ms = p < 50 ? 50 : p > MAX_TICK_MS ? MAX_TICK_MS : p;
  int on = 1;
  if (g->lfamily == AF_INET) setsockopt(g->lfd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
  else setsockopt(g->lfd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
  g->lw.kind = W_UDP_LISTENER;
  g->lw.owner = g;
  g->quota = quota_get(e, g->ctr);
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &g->lw };
  if (!g->quota || table_grow(g) < 0 || epoll_ctl(e->epfd, EPOLL_CTL_ADD, g->lfd, &ev) < 0) {
    int err = g->quota && g->table ? errno : ENOMEM;
    quota_put(e, g->quota);
    close(g->lfd);
    free(g->table);
    free(g->allow);
    free(g->deny);
    napi_delete_reference(env, g->ctr_ref);
    if (g->budget_ref) napi_delete_reference(env, g->budget_ref);
    free(g);
    return throw_errno(env, err, "udpGroup epoll");
  }
  publish_group(e, g);
  hold(env, e, 1);
  return wrap_group(env, g);
}

static napi_value js_group_stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  group_t *g = unwrap_group(env, argv[0]);
  if (g) g->draining = 1;
  return NULL;
}

static napi_value js_group_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = engine_of(env);
  group_t *g = e ? unwrap_group(env, argv[0]) : NULL;
  if (!g) return NULL;
  if (post(e, C_CLOSE_GROUP, g, NULL) < 0) return throw_errno(env, ENOMEM, "groupClose");
  if (g->kind == W_UDP_LISTENER && !g->js_closed) {
    hold(env, e, -1);
    /* The listener's port must be free when this returns (a reload may bind it next): wait for
     * the thread, which runs commands at once, at most 2 s. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    pthread_mutex_lock(&e->mu);
    while (e->started && !g->close_done && pthread_cond_timedwait(&e->closed_cv, &e->mu, &until) == 0) {}
    pthread_mutex_unlock(&e->mu);
  }
  g->js_closed = 1;
  return NULL;
}

/* Called on process 'exit': exit() must not run while our thread still uses the runtime. */
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  (void)info;
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  if (e) engine_stop(e);
  return NULL;
}

static napi_value names_array(napi_env env, const char *const *names, size_t n) {
  napi_value arr, v;
  napi_create_array_with_length(env, n, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_create_string_utf8(env, names[i], NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, (uint32_t)i, v);
  }
  return arr;
}

static void set_int(napi_env env, napi_value obj, const char *key, int64_t value) {
  napi_value v;
  napi_create_int64(env, value, &v);
  napi_set_named_property(env, obj, key, v);
}

/* The contract export: { closeReasons: {name: value}, tcpCounters: [names in index order],
 * udpCounters: [...], aclRecordBytes, udpFlowBuffer }. */
static napi_value make_contract(napi_env env) {
#define ENUM_NAME(id, name) name,
  static const char *const tcp[] = { TCP_COUNTERS(ENUM_NAME) };
  static const char *const udp[] = { UDP_COUNTERS(ENUM_NAME) };
  napi_value c, reasons;
  napi_create_object(env, &c);
  napi_create_object(env, &reasons);
#define REASON_PROP(id, name) set_int(env, reasons, name, id);
  CLOSE_REASONS(REASON_PROP)
  napi_set_named_property(env, c, "closeReasons", reasons);
  napi_set_named_property(env, c, "tcpCounters", names_array(env, tcp, T_COUNT));
  napi_set_named_property(env, c, "udpCounters", names_array(env, udp, U_COUNT));
  set_int(env, c, "aclRecordBytes", ACL_RECORD_BYTES);
  set_int(env, c, "udpFlowBuffer", UDP_FLOW_BUFFER);
  return c;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL },
    { "tcpGroup", NULL, js_tcp_group, NULL, NULL, NULL, napi_default, NULL },
    { "tcpAdopt", NULL, js_tcp_adopt, NULL, NULL, NULL, napi_default, NULL },
    { "udpGroup", NULL, js_udp_group, NULL, NULL, NULL, napi_default, NULL },
    { "groupStop", NULL, js_group_stop, NULL, NULL, NULL, napi_default, NULL },
    { "groupClose", NULL, js_group_close, NULL, NULL, NULL, napi_default, NULL },
    { "shutdown", NULL, js_shutdown, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "contract", make_contract(env));
  return exports;
}
