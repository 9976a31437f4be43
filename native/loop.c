/*
 * The engine thread: one epoll loop per environment, commands from JavaScript, the idle/linger
 * and flow-expiry sweeps, and the close reports sent back to JavaScript once per batch.
 */
#include "engine.h"

/* ---------- the thread ---------- */

/* Closes every connection, flow and listener of a group (connections with bytes pending reset). */
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
    if (g->idle_ms > 0 && idle >= g->idle_ms)
      conn_close(e, c, R_IDLE, conn_pending(c));
    else if (g->linger_ms > 0 && (c->d[0].eof || c->d[1].eof) && idle >= g->linger_ms)
      conn_close(e, c, R_LINGER, conn_pending(c));
  }
  for (flow_t *f = g->flows, *next; f; f = next) {
    next = f->next;
    if (now - f->last >= g->idle_ms) {
      g->ctr[U_FLOWS_EXPIRED] += 1;
      flow_close(e, f);
    }
  }
}

/* Runs the commands JavaScript queued (new connections, group closes). */
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
    if (q->op == C_ADD_CONN)
      tcp_add(e, q->c);
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

/* Frees the connections closed in this batch, then reports their closes to JavaScript at once. */
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

/* The engine thread: epoll events, commands, sweeps and the pipe pool trim, until stopped. */
void *thread_main(void *arg) {
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
    for (group_t *g = groups; g; g = g->next)
      if (g->sweep_ms < tick) tick = g->sweep_ms;
    int n = epoll_wait(e->epfd, evs, EVENTS_PER_WAIT, (int)tick);
    int64_t now = now_ms();
    int commands = 0;
    for (int i = 0; i < n; i++) {
      watch_t *w = evs[i].data.ptr;
      if (w->kind == W_EVENT)
        commands = 1;
      else if (w->kind == W_TCP)
        tcp_event(e, w->owner, w->side, evs[i].events, now);
      else if (w->kind == W_UDP_LISTENER) {
        if (!((group_t *)w->owner)->closed) udp_listener_event(e, w->owner, now);
      } else if (w->kind == W_UDP_FLOW)
        udp_flow_event(e, w->owner, now);
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
