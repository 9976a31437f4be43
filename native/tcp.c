/*
 * TCP: a connection handed over by JavaScript is relayed with splice(2) through a pipe per
 * direction, held only while bytes are in flight and pooled otherwise; half-close, reset
 * propagation and forced closes that reset when bytes are pending.
 */
#include "engine.h"

#include <sys/ioctl.h>

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

/* Closes both ends of a pipe. */
void pipe_close(pipe_pair_t *p) {
  close(p->r);
  close(p->w);
  p->r = p->w = -1;
}

/* Only an empty pipe goes back to the pool; a pipe still holding bytes is closed. */
static void pipe_put(engine_t *e, dir_t *d) {
  if (d->p.r < 0) return;
  if (d->inpipe == 0 && e->npool < PIPE_POOL_MAX)
    e->pool[e->npool++] = d->p;
  else
    pipe_close(&d->p);
  d->p.r = d->p.w = -1;
  d->inpipe = 0;
}

/* The pool shrinks when idle: pipes that stayed pooled through a whole trim period (the bottom
 * of the stack: takes and puts happen at the top) are closed. */
void pool_trim(engine_t *e, int64_t now) {
  if (now < e->next_trim) return;
  e->next_trim = now + POOL_TRIM_MS;
  int unused = e->pool_low;
  for (int i = 0; i < unused; i++) pipe_close(&e->pool[i]);
  memmove(e->pool, e->pool + unused, (size_t)(e->npool - unused) * sizeof e->pool[0]);
  e->npool -= unused;
  e->pool_low = e->npool;
}

/* ---------- TCP ---------- */

/* Records a closed connection for the next report to JavaScript. */
void note_closed(engine_t *e, group_t *g, uint32_t id, int reason) {
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
void conn_close(engine_t *e, conn_t *c, int reason, int rst) {
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
  if (c->prev)
    c->prev->next = c->next;
  else
    g->conns = c->next;
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
void tcp_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now) {
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
/* Bytes would be stranded by a close: in a pipe, or acknowledged to a sender but still unread in
 * a receive buffer (a FIN would then pass a truncated stream off as complete). */
int conn_pending(const conn_t *c) {
  int unread[2] = { 0, 0 };
  for (int k = 0; k < 2; k++)
    if (ioctl(c->fd[k], FIONREAD, &unread[k]) < 0) unread[k] = 0;
  return c->d[0].inpipe > 0 || c->d[1].inpipe > 0 || unread[0] > 0 || unread[1] > 0;
}

/* Registers a handed-off connection on the thread (or closes it if its group is gone). */
void tcp_add(engine_t *e, conn_t *c) {
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
