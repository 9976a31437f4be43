/*
 * TCP listeners on the engine thread: accept4 in batches, the per-mapping connection cap, the
 * access lists, the process fd budget, a non-blocking dial whose connect timeout the thread's
 * timers drive, the PROXY protocol header, then the splice relay (tcp.c). No JavaScript runs per
 * connection: counters and histograms are written into the mapping's Float64Array, and what must
 * be logged goes to JavaScript as events, coalesced per epoll batch (loop.c).
 *
 * Semantics are the JavaScript engine's (tcp-forwarder.ts, tcp-dial.ts):
 * - refusals: over the cap or the fd budget a FIN (accepted, then closed); refused by the access
 *   lists a reset, so the client never takes it for an empty answer;
 * - a failed or timed-out dial closes the client: a FIN when it sent nothing, a reset when its
 *   bytes were read by the kernel and now cannot be delivered (close() with unread bytes resets);
 * - a client that resets during the dial ends it (aborted); one that half-closes does not: its
 *   bytes and FIN go out after the connect;
 * - the client's early bytes wait in its receive buffer and are spliced at the connect, after the
 *   PROXY header (a fresh socket's send buffer always takes the header whole).
 */
#include "engine.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>

static void set_int(int fd, int level, int name, int v) { setsockopt(fd, level, name, &v, sizeof v); }

/* The dial queue holds a group's dialing connections in accept order, which is deadline order:
 * every connection of a group has the same connect timeout. */
static void dial_push(group_t *g, conn_t *c) {
  c->dialing = 1;
  c->dnext = NULL;
  c->dprev = g->dial_tail;
  if (g->dial_tail)
    g->dial_tail->dnext = c;
  else
    g->dial_head = c;
  g->dial_tail = c;
}

/* A failed dial (errno err, or ETIMEDOUT from our own timeout): counted by reason, reported,
 * both sockets closed (the client's close resets it if its bytes are unread). */
static void dial_failed(engine_t *e, conn_t *c, int err, int ours) {
  group_t *g = c->g;
  /* EADDRNOTAVAIL: no local port left toward this target (TIME_WAIT entries hold them all). */
  int slot = err == ECONNREFUSED                         ? T_CONNECT_REFUSED
             : err == ETIMEDOUT                          ? T_CONNECT_TIMEOUT
             : err == EHOSTUNREACH || err == ENETUNREACH ? T_CONNECT_UNREACHABLE
             : err == EADDRNOTAVAIL                      ? T_CONNECT_NO_PORT
                                                         : T_CONNECT_OTHER;
  g->ctr[slot] += 1;
  group_event(e, g, ours ? EV_CONNECT_TIMEOUT : EV_CONNECT, err);
  conn_close(e, c, R_ABORTED, 0);
}

/* The address as a PROXY header carries it (addr_plain: an IPv4-mapped client is the IPv4
 * address it is, so that the target's IPv4 trust lists match it). Returns 4, 6, or 0 for neither. */
static int header_addr(const struct sockaddr_storage *ss, uint8_t out[16], uint16_t *port) {
  int fam = 0;
  if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) return 0;
  *port = (uint16_t)addr_plain(ss, out, &fam);
  return fam;
}

/* Builds the PROXY header of a client connection (proxy-protocol.ts byte for byte); its length,
 * or -1 when an address is missing. The client's address is the one accept4 returned: a client
 * that sent and reset at once has no peer any more for getpeername (audit N2), and a header
 * without the client's address (PROXY UNKNOWN, v2 LOCAL) would make the target take its bytes as
 * the proxy's own. getsockname still answers on a reset socket. */
static int proxy_header(const struct sockaddr_storage *src, int fd, int version, uint8_t *out) {
  static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
  struct sockaddr_storage dst;
  socklen_t dl = sizeof dst;
  uint8_t sa[16], da[16];
  uint16_t sp = 0, dp = 0;
  if (getsockname(fd, (struct sockaddr *)&dst, &dl) < 0) return -1;
  int fam = header_addr(src, sa, &sp);
  if (fam == 0 || header_addr(&dst, da, &dp) != fam) return -1;
  if (version == 1) {
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
    int af = fam == 4 ? AF_INET : AF_INET6;
    inet_ntop(af, sa, s, sizeof s);
    inet_ntop(af, da, d, sizeof d);
    return snprintf((char *)out, PROXY_HEADER_MAX, "PROXY TCP%d %s %s %u %u\r\n", fam, s, d, sp, dp);
  }
  memcpy(out, sig, 12);
  int alen = fam == 4 ? 4 : 16;
  out[12] = 0x21; /* version 2, PROXY */
  out[13] = fam == 4 ? 0x11 : 0x21; /* AF_INET or AF_INET6, STREAM */
  out[14] = 0;
  out[15] = (uint8_t)(alen * 2 + 4);
  memcpy(out + 16, sa, (size_t)alen);
  memcpy(out + 16 + alen, da, (size_t)alen);
  uint8_t *p = out + 16 + 2 * alen;
  p[0] = (uint8_t)(sp >> 8);
  p[1] = (uint8_t)sp;
  p[2] = (uint8_t)(dp >> 8);
  p[3] = (uint8_t)dp;
  return 16 + 2 * alen + 4;
}

/* The dial succeeded (ev: the target's events, all of them when unknown): time it, send the
 * PROXY header, then relay what each side sent meanwhile, FIN included. */
#define ARRIVED (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)
#define ENDED (EPOLLRDHUP | EPOLLHUP | EPOLLERR)
static void dial_done(engine_t *e, conn_t *c, uint32_t ev, int64_t now) {
  group_t *g = c->g;
  dial_unlink(c);
  c->connected = 1;
  c->last = now;
  observe(g->ctr + H_CONNECT, connect_bounds, N_CONNECT_BOUNDS, mono_s() - c->t0);
  if (c->hdr) {
    int sent = send(c->fd[1], c->hdr, (size_t)c->hlen, MSG_NOSIGNAL) == c->hlen;
    free(c->hdr);
    c->hdr = NULL;
    if (!sent) {
      conn_close(e, c, R_ABORTED, 1);
      return;
    }
  }
  /* The client's edges while dialing were recorded, not acted on; the target's are in ev. */
  int want[2] = { (c->early & ARRIVED) != 0, (ev & ARRIVED) != 0 };
  int hint[2] = { (c->early & ENDED) != 0, (ev & ENDED) != 0 };
  tcp_relay(e, c, want, hint, now);
}

/* An epoll event of a dialing connection: the target's side completes (or fails) the connect;
 * the client's side only matters if the client is gone (a reset: the dial is abandoned). */
void dial_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now) {
  if (s == 0) {
    if (ev & (EPOLLERR | EPOLLHUP))
      conn_close(e, c, R_ABORTED, 0);
    else
      c->early |= ev;
    return;
  }
  /* A failed connect always raises EPOLLERR: only then is SO_ERROR worth a syscall. */
  int err = 0;
  if (ev & EPOLLERR) {
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  }
  if (err)
    dial_failed(e, c, err, 0);
  else if (ev & EPOLLOUT)
    dial_done(e, c, ev, now);
}

/* Opens the upstream socket and starts a non-blocking connect; 0 or an errno. */
static int dial_start(engine_t *e, conn_t *c, int64_t now) {
  group_t *g = c->g;
  int fd = socket(g->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  c->fd[1] = fd;
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  reset_on_close(fd, 1);
  int r = connect(fd, (struct sockaddr *)&g->target, g->tlen);
  if (r < 0 && errno != EINPROGRESS) return errno;
  /* Registered once, for the relay: while dialing, the target's EPOLLOUT is the connect's
   * outcome and the client matters only if it resets (dial_event); the client's EPOLLIN edges
   * seen meanwhile are not lost, since dial_done pumps whatever arrived. */
  for (int k = 1; k >= 0; k--) {
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->w[k] };
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->fd[k], &ev) < 0) return errno;
  }
  c->deadline = g->connect_ms > 0 ? now + g->connect_ms : 0;
  dial_push(g, c);
  if (r == 0) dial_done(e, c, ARRIVED, now); /* connected at once: nothing is known */
  return 0;
}

/* One accepted client: cap, access lists, budget, then the dial. */
static void accept_one(engine_t *e, group_t *g, int fd, const struct sockaddr_storage *ss, int64_t now) {
  /* fd inherited the listener's reset-on-close: a refusal by the lists keeps it (a reset), the
   * others disarm it (a close, as the JavaScript engine's destroy()). */
  if (g->max_conns >= 0 && g->ctr[T_ACTIVE] >= (double)g->max_conns) {
    g->ctr[T_REJECTED_LIMIT] += 1;
    group_event(e, g, EV_LIMIT, 0);
    reset_on_close(fd, 0);
    close(fd);
    return;
  }
  if (!acl_allowed(g, ss)) {
    g->ctr[T_REJECTED_BLOCKED] += 1;
    group_blocked(e, g, ss);
    close(fd);
    return;
  }
  if (!budget_take(g, g->conn_fds)) {
    g->ctr[T_REJECTED_LIMIT] += 1;
    group_event(e, g, EV_BUDGET, 0);
    reset_on_close(fd, 0);
    close(fd);
    return;
  }
  conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    budget_give(g, g->conn_fds);
    g->ctr[T_ACCEPT_ERRORS] += 1;
    group_event(e, g, EV_ACCEPT, ENOMEM);
    reset_on_close(fd, 0);
    close(fd);
    return;
  }
  c->g = g;
  c->fd[0] = fd;
  c->fd[1] = -1;
  c->t0 = mono_s();
  c->last = now;
  for (int k = 0; k < 2; k++) {
    c->w[k].kind = W_TCP;
    c->w[k].side = k;
    c->w[k].owner = c;
    c->d[k].p.r = c->d[k].p.w = -1;
  }
  c->next = g->conns;
  if (g->conns) g->conns->prev = c;
  g->conns = c;
  g->ctr[T_ACCEPTED] += 1;
  g->ctr[T_ACTIVE] += 1;
  if (g->proxy) {
    uint8_t hdr[PROXY_HEADER_MAX];
    int n = proxy_header(ss, fd, g->proxy, hdr);
    if (n < 0 || !(c->hdr = malloc((size_t)n))) { /* no address to send: never dial without it */
      conn_close(e, c, R_ABORTED, 1);
      return;
    }
    memcpy(c->hdr, hdr, (size_t)n);
    c->hlen = n;
  }
  int err = dial_start(e, c, now);
  if (err) dial_failed(e, c, err, 0);
}

/* The listening socket is readable: accept a batch (level-triggered: the rest comes next turn). */
void tcp_listener_event(engine_t *e, group_t *g, int64_t now) {
  for (int i = 0; i < ACCEPT_BATCH && g->lfd >= 0 && !g->closed; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(g->lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      accept_one(e, g, fd, &ss, now);
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      /* Out of a resource: the clients wait in the backlog while accepting pauses (a
       * level-triggered listener would otherwise spin). The listener never stops. */
      g->ctr[T_ACCEPT_ERRORS] += 1;
      group_event(e, g, EV_ACCEPT, errno);
      epoll_ctl(e->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
      g->accept_resume = now + ACCEPT_RETRY_MS;
      return;
    }
    /* ECONNABORTED, EINTR and the network errors accept(2) says to retry: the next client. */
  }
}

/* Go's options on accepted clients (no Nagle; keepalive, 15 s idle and interval), set once on
 * the listener: Linux clones an accepted socket from its listener, options included, which
 * saves four setsockopt calls per connection. */
void listener_options(int fd) {
  reset_on_close(fd, 1); /* every accepted client is armed (engine.h) */
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, CLIENT_KEEPALIVE_S);
  set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, CLIENT_KEEPALIVE_S);
}

/* Connect timeouts and the end of an accept pause; returns ms until the next one (or -1). */
int64_t tcp_timers(engine_t *e, group_t *g, int64_t now) {
  if (g->closed) return -1;
  while (g->dial_head && g->dial_head->deadline > 0 && g->dial_head->deadline <= now)
    dial_failed(e, g->dial_head, ETIMEDOUT, 1);
  if (g->accept_resume > 0 && g->accept_resume <= now) {
    g->accept_resume = 0;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &g->lw };
    if (g->lfd >= 0) epoll_ctl(e->epfd, EPOLL_CTL_ADD, g->lfd, &ev);
  }
  int64_t next = -1;
  if (g->dial_head && g->dial_head->deadline > 0) next = g->dial_head->deadline - now;
  if (g->accept_resume > 0 && (next < 0 || g->accept_resume - now < next)) next = g->accept_resume - now;
  return next;
}
