/*
 * TCP: a connection accepted and dialled by accept.c is relayed with splice(2) through a pipe
 * per direction, held only while bytes are in flight and pooled otherwise; half-close, reset
 * propagation, forced closes that reset when bytes are pending, and the accounting of every close.
 *
 * Theory of operation. A connection (conn_t) lives in one group's list and moves through:
 *   dialing    accept.c owns it: on the group's dial queue (deadline order), the client's epoll
 *              events only remembered (early); loop.c hands its events to dial_event
 *   connected  the relay's: two directions d[0] client->target and d[1] target->client, each
 *              reading from its src only while its dst takes bytes:
 *                flowing   bytes move by small_copy (a burst up to 16 KiB through the thread's
 *                          buffer) or through a pipe (inpipe bytes held in it);
 *                blocked   its dst is full: it waits for EPOLLOUT on dst, reading nothing;
 *                eof       its src said FIN; once its pipe is empty it shuts dst's write side
 *                          (shut): half-close passed on.
 *              Both directions shut: a clean close. An error or hang-up on either side closes
 *              both, with a reset where bytes would be stranded (conn_pending).
 *   dead       closed (conn_close: counted by reason, reported to JavaScript when asked), on the
 *              engine's dead list until the end of the epoll batch, whose events may name it.
 * Forced closes (idle, linger, drain, stop) come from loop.c's sweep and commands, through
 * conn_close with rst set when bytes are pending. This file never calls up into accept.c.
 */
#include "engine.h"

#include <sys/ioctl.h>

/* ---------- accounting and the dial queue (accept.c fills them; a close empties them) ---------- */

const double connect_bounds[N_CONNECT_BOUNDS] = { CONNECT_BOUNDS };
const double lifetime_bounds[N_LIFETIME_BOUNDS] = { LIFETIME_BOUNDS };

/* Records v in a histogram laid out as histogram.ts's PlainHistogram: counts, sum, count. */
void observe(double *h, const double *bounds, int n, double v) {
  int i = 0;
  while (i < n && v > bounds[i]) i++;
  h[i] += 1;
  h[n + 1] += v;
  h[n + 2] += 1;
}

/* Takes a connection off its group's dial queue. */
void dial_unlink(conn_t *c) {
  if (!c->dialing) return;
  group_t *g = c->g;
  c->dialing = 0;
  if (c->dprev)
    c->dprev->dnext = c->dnext;
  else
    g->dial_head = c->dnext;
  if (c->dnext)
    c->dnext->dprev = c->dprev;
  else
    g->dial_tail = c->dprev;
}

/* ---------- pipes ---------- */

/* A pipe from the pool, or a new one raised to the group's size. A new pipe takes its 2 fds from
 * the pipes' allowance of the process budget (pooled pipes stay counted; access.c says why it is
 * their own): -EDQUOT when the allowance is spent, and the
 * caller relays without a pipe (small_copy's peek mode). F_SETPIPE_SZ fails with EPERM once an
 * unprivileged user holds pipe-user-pages-soft (64 MiB) of pipes; the pipe then keeps its
 * default 64 KiB, which still works. */
static int pipe_get(engine_t *e, dir_t *d, size_t want) {
  if (e->npool > 0) {
    d->p = e->pool[--e->npool];
    if (e->npool < e->pool_low) e->pool_low = e->npool;
    return 0;
  }
  if (e->budget && !pipe_budget_take(e->budget)) return -EDQUOT;
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
    int err = errno;
    if (e->budget) pipe_budget_give(e->budget);
    return -err;
  }
  int cap = fcntl(fds[1], F_SETPIPE_SZ, (int)want);
  if (cap < 0) cap = fcntl(fds[1], F_GETPIPE_SZ);
  d->p.r = fds[0];
  d->p.w = fds[1];
  d->p.cap = cap > 0 ? (size_t)cap : 65536;
  return 0;
}

/* Whether a burst could have a pipe now: a pooled one, or budget for a new one. */
static int pipe_available(engine_t *e) { return e->npool > 0 || !e->budget || pipe_budget_room(e->budget); }

/* Closes both ends of a pipe and gives its fds back to the budget. */
void pipe_close(engine_t *e, pipe_pair_t *p) {
  close(p->r);
  close(p->w);
  p->r = p->w = -1;
  if (e->budget) pipe_budget_give(e->budget);
}

/* Only an empty pipe goes back to the pool; a pipe still holding bytes is closed. */
static void pipe_put(engine_t *e, dir_t *d) {
  if (d->p.r < 0) return;
  if (d->inpipe == 0 && e->npool < PIPE_POOL_MAX)
    e->pool[e->npool++] = d->p;
  else
    pipe_close(e, &d->p);
  d->p.r = d->p.w = -1;
  d->inpipe = 0;
}

/* The pool shrinks when idle: pipes that stayed pooled through a whole trim period (the bottom
 * of the stack: takes and puts happen at the top) are closed. */
void pool_trim(engine_t *e, int64_t now) {
  if (now < e->next_trim) return;
  e->next_trim = now + POOL_TRIM_MS;
  int unused = e->pool_low;
  for (int i = 0; i < unused; i++) pipe_close(e, &e->pool[i]);
  memmove(e->pool, e->pool + unused, (size_t)(e->npool - unused) * sizeof e->pool[0]);
  e->npool -= unused;
  e->pool_low = e->npool;
}

/* ---------- TCP ---------- */

/* A clean close after our FIN reached the target first: its TIME_WAIT entry is removed
 * (time-wait.c says why that is safe). Without the privilege or the kernel support, once: the
 * group reports it and the thread stops trying. */
static void time_wait_end(engine_t *e, conn_t *c) {
  int r = tw_end(&e->nl, c->fd[1], &c->tw);
  if (r == 0)
    c->g->ctr[T_TIME_WAIT_ENDED] += 1;
  else if (r != -ENOENT) {
    e->tw_off = 1;
    group_event(e, c->g, EV_TIME_WAIT, -r);
  }
}

/* Closes both sockets. rst: SO_LINGER 0 makes close() send a reset, so that a peer never takes
 * a truncated stream for a complete one. Freeing waits for the end of the epoll batch, which
 * may still hold events pointing at this connection. */
void conn_close(engine_t *e, conn_t *c, int reason, int rst) {
  if (c->dead) return;
  c->dead = 1;
  dial_unlink(c);
  free(c->hdr);
  c->hdr = NULL;
  if (reason == R_CLEAN && c->tw.family && !e->tw_off) time_wait_end(e, c);
  for (int k = 0; k < 2; k++) {
    if (c->fd[k] < 0) continue;
    if (!rst) reset_on_close(c->fd[k], 0); /* armed since accept and dial (engine.h) */
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
  /* The accounting of tcp-forwarder.ts's end(): anything but a clean double close is aborted. */
  g->ctr[T_ACTIVE] -= 1;
  budget_give(g, g->conn_fds);
  if (c->connected) observe(g->ctr + H_LIFETIME, lifetime_bounds, N_LIFETIME_BOUNDS, mono_s() - c->t0);
  if (reason != R_CLEAN) g->ctr[T_ABORTED] += 1;
  if (reason == R_IDLE) {
    g->ctr[T_IDLE_TIMEOUTS] += 1;
    group_event(e, g, EV_IDLE, 0);
  } else if (reason == R_LINGER) {
    g->ctr[T_LINGER_TIMEOUTS] += 1;
    group_event(e, g, EV_LINGER, 0);
  }
}

/* n bytes taken from direction k's src: counted, and activity for the idle timeout. */
static void taken(conn_t *c, int k, size_t n, int64_t now) {
  c->g->ctr[k == 0 ? T_BYTES_IN : T_BYTES_OUT] += (double)n;
  c->last = now;
}

/* dst of direction k cannot take more: counted once per stall (backpressure_pauses_total). */
static void stalled(conn_t *c, int k) {
  if (c->d[k].blocked) return;
  c->d[k].blocked = 1;
  c->g->ctr[k == 0 ? T_PAUSES_CLIENT : T_PAUSES_UPSTREAM] += 1;
}

/* What small_copy() leaves to its caller. */
enum { SC_DRAINED, SC_SHORT, SC_AGAIN, SC_EOF, SC_PIPE, SC_BLOCKED };

/* The small-copy path: a burst that starts with an empty pipe is first read into the thread's
 * buffer and sent on directly; only a burst larger than the buffer, or a destination that cannot
 * take it all, goes on through the pipe (what send() left enters the pipe first, so order
 * holds). Request/response traffic thus never touches a pipe. A short recv() also shows the
 * socket empty (a short splice may only mean "pipe out of slots"), so no probing read follows
 * it: with edge-triggered epoll, any byte or FIN arriving later raises a new event.
 * peek: no pipe can be had (the fd budget is spent): the bytes are only peeked at, and those
 * that dst took are then dropped from src (MSG_TRUNC: no copy); the rest stays in src's receive
 * buffer, where TCP flow control holds the sender back, until dst is writable again.
 * Returns an SC_ value, or -errno. */
static int small_copy(engine_t *e, conn_t *c, int k, int64_t now, int peek) {
  dir_t *d = &c->d[k];
  int src = c->fd[k], dst = c->fd[1 - k];
  ssize_t n = recv(src, e->small, SMALL_READ, MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
  if (n < 0) return errno == EAGAIN ? SC_DRAINED : errno == EINTR ? SC_AGAIN : -errno;
  if (n == 0) {
    d->eof = 1;
    return SC_EOF;
  }
  ssize_t m = send(dst, e->small, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (m < 0 && errno != EAGAIN && errno != EINTR) return -errno;
  if (m < 0) m = 0;
  if (m > 0) {
    taken(c, k, (size_t)m, now);
    d->blocked = 0;
  }
  if (peek) {
    if (m > 0 && recv(src, e->small, (size_t)m, MSG_DONTWAIT | MSG_TRUNC) != m) return -EIO;
    if (m < n) {
      /* dst is full; the rest stays in src. dst's EPOLLOUT resumes this direction (tcp_event). */
      stalled(c, k);
      return SC_BLOCKED;
    }
  } else if (m < n) {
    /* dst is slow: the rest waits in a pipe, as a spliced burst would (an empty pipe holds at
     * least 64 KiB, so it takes these bytes whole). Its budget was there a moment ago; if
     * another thread took it since, the bytes cannot wait anywhere: the connection resets. */
    taken(c, k, (size_t)(n - m), now);
    int err = pipe_get(e, d, c->g->pipe_bytes);
    if (err) return err == -EDQUOT ? -ENOBUFS : err;
    ssize_t w = write(d->p.w, e->small + m, (size_t)(n - m));
    if (w != n - m) return w < 0 ? -errno : -EIO;
    d->inpipe = (size_t)w;
    return SC_PIPE;
  }
  return n == SMALL_READ ? SC_PIPE : SC_SHORT; /* a full buffer: more may wait */
}

/* Moves what is readable on src to dst, directly (small_copy) or through the direction's pipe,
 * until neither end can make progress. `eof_hint`: src's FIN may be pending (the event said so,
 * or nothing is known), so a short read is followed by one more that would see it.
 * Returns 0 or -errno of a failed read or write. */
static int dir_pump(engine_t *e, conn_t *c, int k, int64_t now, int eof_hint) {
  dir_t *d = &c->d[k];
  int src = c->fd[k], dst = c->fd[1 - k];
  int nopipe = 0;
copy:
  while (!d->eof && d->inpipe == 0) {
    int peek = nopipe || (d->p.r < 0 && !pipe_available(e));
    int r = small_copy(e, c, k, now, peek);
    if (r < 0) return r;
    if (r == SC_EOF || (r == SC_PIPE && !peek)) break;
    if (r == SC_BLOCKED || r == SC_DRAINED || (r == SC_SHORT && !eof_hint)) goto done;
    if (r == SC_SHORT) eof_hint = 0;
  }
  for (;;) {
    int progress = 0;
    if (!d->eof) {
      if (d->p.r < 0) {
        int err = pipe_get(e, d, c->g->pipe_bytes);
        if (err == -EDQUOT) { /* no pipe to be had: the burst goes on by peek and copy */
          nopipe = 1;
          goto copy;
        }
        if (err) return err;
      }
      if (d->inpipe < d->p.cap) {
        /* With edge-triggered epoll, EAGAIN here means "socket empty" or "pipe out of slots"
         * (each skb fragment takes a slot). The loop retries the read after every drain, so the
         * second case never waits for an EPOLLIN edge that will not come. */
        ssize_t n = splice(src, NULL, d->p.w, NULL, d->p.cap - d->inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          d->inpipe += (size_t)n;
          taken(c, k, (size_t)n, now);
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
        stalled(c, k);
      } else if (m < 0 && errno == EINTR) {
        progress = 1;
      } else {
        return m < 0 ? -errno : -EIO;
      }
    }
    if (!progress) break;
  }
done:
  /* Idle connections hold no pipe: a pipe is taken per burst and pooled again when empty. */
  if (d->inpipe == 0) pipe_put(e, d);
  if (d->eof && d->inpipe == 0 && !d->shut) {
    /* Half-close: FIN to dst only after every byte before the EOF went out. When the other
     * direction is already done, the clean close that follows (tcp_event) sends this FIN: dst
     * has nothing unread (its own EOF came first), so close() cannot turn into a reset. */
    if (!c->d[1 - k].shut) {
      /* Our FIN to the target before its own: this side will hold the TIME_WAIT (time-wait.c). */
      if (k == 0 && !c->d[1].eof && !e->tw_off && tw_mark(dst, &c->tw) < 0) c->tw.family = 0;
      shutdown(dst, SHUT_WR);
    }
    d->shut = 1;
  }
  return 0;
}

/* Pumps the directions asked for (want[k]: direction k's src may have bytes; hint[k]: its FIN
 * may be pending), then closes the connection if both directions are done or one failed. */
void tcp_relay(engine_t *e, conn_t *c, const int want[2], const int hint[2], int64_t now) {
  int err = 0;
  for (int k = 0; k < 2 && !err; k++)
    if (want[k]) err = dir_pump(e, c, k, now, hint[k]);
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

/* One epoll event on side s of a connection. EPOLLIN or EPOLLRDHUP on side s feeds direction s.
 * EPOLLOUT (send space freed by ACKs: it comes often) matters only to a blocked direction 1-s
 * (bytes waiting in its pipe, or, without a pipe, in its src): otherwise that direction stopped
 * reading because its src was empty, and that src raises its own event when bytes come. An
 * error or hang-up concerns both. */
void tcp_event(engine_t *e, conn_t *c, int s, uint32_t ev, int64_t now) {
  if (c->dead) return;
  int bad = (ev & (EPOLLERR | EPOLLHUP)) != 0;
  int want[2], hint[2];
  want[s] = bad || (ev & (EPOLLIN | EPOLLRDHUP));
  hint[s] = bad || (ev & EPOLLRDHUP);
  want[1 - s] = bad || ((ev & EPOLLOUT) && (c->d[1 - s].inpipe > 0 || c->d[1 - s].blocked));
  hint[1 - s] = 1;
  tcp_relay(e, c, want, hint, now);
}

/* Bytes would be stranded by a close: in a pipe, or acknowledged to a sender but still unread in
 * a receive buffer (a FIN would then pass a truncated stream off as complete). */
int conn_pending(const conn_t *c) {
  int unread[2] = { 0, 0 };
  for (int k = 0; k < 2; k++)
    if (c->fd[k] < 0 || ioctl(c->fd[k], FIONREAD, &unread[k]) < 0) unread[k] = 0;
  return c->d[0].inpipe > 0 || c->d[1].inpipe > 0 || unread[0] > 0 || unread[1] > 0;
}
