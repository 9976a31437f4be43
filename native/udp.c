/*
 * UDP: a flow per client address with its own connected socket, access lists, the per-mapping
 * flow cap and per-source share, the process fd budget, IP_PKTINFO replies, and batched
 * recvmmsg/sendmmsg with GSO.
 *
 * Theory of operation. The listening socket (the group's) reads batches; each datagram's client
 * address and port find its flow in the group's hash table, or open one:
 *   refused    blocked by the access lists, over the mapping's flow cap or its source's share,
 *              or no fd left in the budget: the datagram is dropped and counted; no flow exists
 *   open       a socket connected to the target (fd taken from the budget), with the address the
 *              client sent to (IP_PKTINFO, dst) kept for the replies; client datagrams go out on
 *              it in batches, the target's replies come back on it and leave from the listening
 *              socket with that source address; each datagram either way renews `last`
 *   expired    no datagram either way for the idle timeout (loop.c's sweep): closed, its fd and
 *              its source's count given back. An ICMP refusal never closes a flow.
 * A flow belongs to its group's table, or, when its mapping was released (dockerd died) and the
 * same mapping registers again, moves to the new group whole (flows_adopt): same socket, same
 * source port towards the container.
 */
#include "engine.h"

/* ---------- UDP ---------- */

/* FNV-1a of a client address and port (the flow table's key). */
static uint64_t addr_hash(const struct sockaddr_storage *ss) {
  uint8_t a[16];
  int fam;
  uint64_t h = 1469598103934665603ull;
  int port = addr_bytes(ss, a, &fam);
  for (int i = 0; i < (fam == 4 ? 4 : 16); i++) h = (h ^ a[i]) * 1099511628211ull;
  return (h ^ (uint64_t)port) * 1099511628211ull;
}

/* True when two client addresses and ports are the same. */
static int addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

/* The flow of a client address, or NULL. */
static flow_t *flow_find(group_t *g, const struct sockaddr_storage *ss) {
  if (!g->table) return NULL;
  for (flow_t *f = g->table[addr_hash(ss) & (g->buckets - 1)]; f; f = f->hnext)
    if (addr_equal(&f->client, ss)) return f;
  return NULL;
}

/* Keeps chains short: the table doubles when flows outnumber buckets. */
int table_grow(group_t *g) {
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
quota_t *quota_get(engine_t *e, double *ctr) {
  pthread_mutex_lock(&e->mu);
  quota_t *q = e->quotas;
  while (q && q->ctr != ctr) q = q->next;
  if (q)
    q->refs++;
  else if ((q = calloc(1, sizeof *q))) {
    q->ctr = ctr;
    q->refs = 1;
    q->next = e->quotas;
    e->quotas = q;
  }
  pthread_mutex_unlock(&e->mu);
  return q;
}

/* Drops a group's hold on its mapping's quota; the last one frees it. */
void quota_put(engine_t *e, quota_t *q) {
  if (!q) return;
  pthread_mutex_lock(&e->mu);
  int last = --q->refs == 0;
  if (last)
    for (quota_t **pp = &e->quotas; *pp; pp = &(*pp)->next)
      if (*pp == q) {
        *pp = q->next;
        break;
      }
  pthread_mutex_unlock(&e->mu);
  if (!last) return;
  for (int i = 0; i < QUOTA_BUCKETS; i++)
    while (q->b[i]) {
      src_count_t *s = q->b[i];
      q->b[i] = s->next;
      free(s);
    }
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
  for (src_count_t *s = *head; s; s = s->next)
    if (memcmp(s->addr, a, 16) == 0) return s;
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
  for (src_count_t **pp = &q->b[h % QUOTA_BUCKETS]; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  free(s);
}

/* Takes a flow out of its group's table, list and counts (not its fd or per-source count). */
static void flow_unlink(flow_t *f) {
  group_t *g = f->g;
  flow_t **pp = &g->table[addr_hash(&f->client) & (g->buckets - 1)];
  while (*pp != f) pp = &(*pp)->hnext;
  *pp = f->hnext;
  if (f->prev)
    f->prev->next = f->next;
  else
    g->flows = f->next;
  if (f->next) f->next->prev = f->prev;
  g->nflows--;
  g->ctr[U_FLOWS_ACTIVE] -= 1;
}

/* Puts a flow in a group's table, list and counts (the table has room: table_grow first). */
static void flow_link(group_t *g, flow_t *f) {
  size_t b = addr_hash(&f->client) & (g->buckets - 1);
  f->g = g;
  f->hnext = g->table[b];
  g->table[b] = f;
  f->prev = NULL;
  f->next = g->flows;
  if (g->flows) g->flows->prev = f;
  g->flows = f;
  g->nflows++;
  g->ctr[U_FLOWS_ACTIVE] += 1;
}

/* Closes a flow: its socket, its table entry, its fd and per-source counts. */
void flow_close(engine_t *e, flow_t *f) {
  group_t *g = f->g;
  flow_unlink(f);
  epoll_ctl(e->epfd, EPOLL_CTL_DEL, f->fd, NULL);
  close(f->fd);
  budget_give(g, 1);
  src_release(g->quota, &f->client);
  free(f);
}

/* Moves every flow of src, a mapping whose dockerd died (its port released, C_STOP_GROUP), into
 * dst, the same mapping registered again by the restarted dockerd: a client's next datagram finds
 * its flow, so the container still sees the same source port, and replies leave from dst's socket
 * (same address and port). Each flow keeps its fd, hence its place in the one budget both count
 * against; a client that already opened a flow in dst keeps that one. */
void flows_adopt(engine_t *e, group_t *dst, group_t *src) {
  if (dst->kind == W_TCP || src->kind == W_TCP || dst->closed || src->closed || dst->budget != src->budget) return;
  while (src->flows) {
    flow_t *f = src->flows;
    src_count_t *s = NULL;
    if (flow_find(dst, &f->client) || ((size_t)dst->nflows >= dst->buckets && table_grow(dst) < 0) ||
        !(s = dst->quota ? src_slot(dst->quota, &f->client, 1) : NULL)) {
      flow_close(e, f);
      continue;
    }
    s->n++;
    src_release(src->quota, &f->client);
    flow_unlink(f);
    flow_link(dst, f);
  }
}

/* A flow's own connected socket: the connect filters replies from anyone but the target. */
static flow_t *flow_open(engine_t *e, group_t *g, const struct sockaddr_storage *ss, socklen_t len, int64_t now) {
  if ((size_t)g->nflows >= g->buckets && table_grow(g) < 0) return NULL;
  src_count_t *src = g->quota ? src_slot(g->quota, ss, 1) : NULL;
  if (!src) return NULL;
  src->n++;
  /* One fd out of the process budget, shared with every other mapping and engine. errno 0 tells
   * the caller it was the budget: a limit, as the JS engine counts it, not an error. */
  if (!budget_take(g, 1)) {
    src_release(g->quota, ss);
    errno = 0;
    return NULL;
  }
  flow_t *f = NULL;
  int fd = socket(g->target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) goto undo;
  int sz = UDP_FLOW_BUFFER;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  f = calloc(1, sizeof *f);
  if (!f || connect(fd, (struct sockaddr *)&g->target, g->tlen) < 0) goto undo;
  f->w.kind = W_UDP_FLOW;
  f->w.owner = f;
  f->g = g;
  f->fd = fd;
  memcpy(&f->client, ss, len);
  f->clen = len;
  f->last = now;
  /* Level-triggered: a busy flow is served one batch per wakeup, so others are not starved. */
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &f->w };
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) goto undo;
  flow_link(g, f);
  g->ctr[U_FLOWS_CREATED] += 1;
  return f;
undo: /* the flow never opened: its fd, its budget and its per-source count go back */
  errno = errno ? errno : EIO; /* what failed, for the caller; the clean-up keeps it */
  int err = errno;
  free(f);
  if (fd >= 0) close(fd);
  budget_give(g, 1);
  src_release(g->quota, ss);
  errno = err;
  return NULL;
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

/* The thread's batch buffers, allocated on first use. */
static udp_io_t *udp_buffers(engine_t *e) {
  if (!e->io) e->io = malloc(sizeof *e->io);
  return e->io;
}

/* Errors with which a kernel or device refuses UDP_SEGMENT (rather than the datagram). */
static int gso_refused(int err) { return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP; }

/* Sends messages [0, n) on fd; segs[i] datagrams each (NULL: one). What the socket cannot take
 * now is dropped and counted (UDP semantics). Returns -1 with *failed set when the kernel
 * refuses a GSO message, so that the caller can resend plainly; otherwise 0. */
static int send_batch(engine_t *e, group_t *g, int fd, struct mmsghdr *m, int n, const int *segs, int *failed) {
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
      if (errno == ECONNREFUSED)
        g->ctr[U_REFUSED] += 1;
      else {
        g->ctr[U_DROP_SEND] += segs ? segs[i] : 1;
        group_event(e, g, EV_FLOW_ERROR, errno);
      }
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
    send_batch(e, g, fd, m, n, NULL, NULL);
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
  if (send_batch(e, g, fd, io->gm, k, io->segs, &failed) < 0) {
    int done = 0;
    for (int x = 0; x < failed; x++) done += io->segs[x];
    g->no_gso = 1;
    send_batch(e, g, fd, m + done, n - done, NULL, NULL);
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
      if (g->draining) {
        flows[i] = NULL;
        continue;
      }
      if (!acl_allowed(g, from)) {
        g->ctr[U_DROP_BLOCKED] += 1;
        group_blocked(e, g, from);
        flows[i] = NULL;
        continue;
      }
      /* The cap is per mapping: every port of a range shares its counters (M3); one client
       * address may hold only its share of it (L7). */
      if (g->ctr[U_FLOWS_ACTIVE] >= g->max_flows) {
        g->ctr[U_DROP_LIMIT] += 1;
        group_event(e, g, EV_FLOW_LIMIT, 0);
        flows[i] = NULL;
        continue;
      }
      src_count_t *sc = src_slot(g->quota, from, 0);
      if (sc && sc->n >= g->per_source) {
        g->ctr[U_DROP_LIMIT] += 1;
        group_event(e, g, EV_FLOW_LIMIT, 0);
        flows[i] = NULL;
        continue;
      }
      f = flow_open(e, g, from, io->m[i].msg_hdr.msg_namelen, now);
      if (!f) {
        int err = errno;
        g->ctr[err ? U_DROP_SEND : U_DROP_LIMIT] += 1;
        group_event(e, g, err ? EV_FLOW_ERROR : EV_FLOW_LIMIT, err);
        flows[i] = NULL;
        continue;
      }
    }
    if (g->wildcard) take_pktinfo(f, &io->m[i].msg_hdr);
    f->last = now;
    flows[i] = f;
    g->ctr[U_DGRAMS_IN] += 1;
    g->ctr[U_BYTES_IN] += io->m[i].msg_len;
  }
  /* Reuse the receive headers as send headers: connected sockets need no address. */
  for (int i = 0; i < n;) {
    if (!flows[i]) {
      i++;
      continue;
    }
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
void udp_listener_event(engine_t *e, group_t *g, int64_t now) {
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
  /* Released (its dockerd died): nothing to send from until a restarted one's mapping adopts it. */
  if (n > 0 && g->lfd < 0)
    g->ctr[U_DROP_SEND] += n;
  else if (n > 0)
    send_datagrams(e, g, g->lfd, io->m, n);
  return n;
}

/* Target replies: a few batches per wakeup, then other sockets get their turn. */
void udp_flow_event(engine_t *e, flow_t *f, int64_t now) {
  for (int r = 0; r < UDP_ROUNDS && udp_flow_batch(e, f, now) == UDP_BATCH; r++) {}
}
