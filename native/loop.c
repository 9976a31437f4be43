/*
 * The engine thread: one epoll loop per environment, commands from JavaScript, the idle/linger
 * and flow-expiry sweeps, connect timeouts, and the events sent back to JavaScript once per batch.
 */
#include "engine.h"

/* ---------- the thread ---------- */

/* Closes a group's listening socket: its port is free from here on. */
static void listener_close(engine_t *e, group_t *g) {
  if (g->lfd < 0) return;
  epoll_ctl(e->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
  close(g->lfd);
  g->lfd = -1;
}

/* Closes every connection, flow and listener of a group (connections with bytes pending reset). */
static void group_close(engine_t *e, group_t *g) {
  g->closed = 1;
  listener_close(e, g);
  while (g->conns) conn_close(e, g->conns, R_CLOSED, conn_pending(g->conns));
  while (g->flows) flow_close(e, g->flows);
  quota_put(e, g->quota);
  g->quota = NULL;
}

/* Closes a group for good and takes it off the thread (audit N6: a closed mapping used to stay on
 * the list, walked on every wakeup, for the life of the process): its pending events are dropped,
 * pipes are taken from another group's budget (every group of an environment shares one), and its
 * memory goes once JavaScript has dropped it too (group_release). */
static void group_retire(engine_t *e, group_t *g) {
  group_close(e, g);
  for (group_t **p = &e->evq; *p; p = &(*p)->ev_next)
    if (*p == g) {
      *p = g->ev_next;
      break;
    }
  g->ev_queued = 0;
  pthread_mutex_lock(&e->mu);
  for (group_t **p = &e->groups; *p; p = &(*p)->next)
    if (*p == g) {
      *p = g->next;
      break;
    }
  if (e->budget == g) {
    e->budget = NULL;
    for (group_t *o = e->groups; o && !e->budget; o = o->next)
      if (o->budget == g->budget) e->budget = o;
  }
  pthread_mutex_unlock(&e->mu);
  /* No group left to count pipes against: the pooled ones go back to the budget now. */
  if (!e->budget && g->budget) {
    group_t *keep = e->budget;
    e->budget = g;
    for (int i = 0; i < e->npool; i++) pipe_close(e, &e->pool[i]);
    e->npool = e->pool_low = 0;
    e->budget = keep;
  }
  group_release(e, g, 1);
}

/* Idle and linger timeouts, and UDP flow expiry: one walk per group per sweep period, no timer
 * per connection. */
static void sweep(engine_t *e, group_t *g, int64_t now) {
  if (g->closed || now < g->next_sweep) return;
  g->next_sweep = now + g->sweep_ms;
  for (conn_t *c = g->conns, *next; c; c = next) {
    next = c->next;
    if (c->dialing) continue; /* the connect timeout governs it (tcp_timers) */
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

/* Runs the commands JavaScript queued (stop accepting, close), telling each waiter when done. */
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
    if (q->op == C_STOP_GROUP)
      listener_close(e, q->g);
    else if (q->op == C_UNWATCH_GROUP) /* UDP hand-over: replies still leave from lfd */
      epoll_ctl(e->epfd, EPOLL_CTL_DEL, q->g->lfd, NULL);
    else if (q->op == C_ADOPT_FLOWS)
      flows_adopt(e, q->g, q->src);
    else
      group_retire(e, q->g);
    free(q);
    /* JS waits for this: the port must be free (a reload may bind it next) and the counters final. */
    pthread_mutex_lock(&e->mu);
    e->done++;
    pthread_cond_broadcast(&e->done_cv);
    pthread_mutex_unlock(&e->mu);
    q = next;
  }
}

/* Queues an event of a group for the next report to JavaScript. */
void group_event(engine_t *e, group_t *g, int ev, int detail) {
  g->ev_n[ev]++;
  g->ev_detail[ev] = detail;
  if (!g->ev_queued) {
    g->ev_queued = 1;
    g->ev_next = e->evq;
    e->evq = g;
  }
}

/* Queues the blocked event with the client's address, which JavaScript logs as the JS engine does
 * (the last one of the batch: the rest are counted). */
void group_blocked(engine_t *e, group_t *g, const struct sockaddr_storage *ss) {
  int fam;
  memset(g->ev_client, 0, sizeof g->ev_client);
  addr_plain(ss, g->ev_client, &fam);
  group_event(e, g, EV_BLOCKED, fam);
}

/* Frees the connections closed in this batch, then reports the batch's events to JavaScript in
 * one call: EVENT_SLOTS doubles per event kind and group (engine.h, EVENTS). */
static void flush(engine_t *e) {
  while (e->dead) {
    conn_t *c = e->dead;
    e->dead = c->dead_next;
    free(c);
  }
  size_t n = 0;
  for (group_t *g = e->evq; g; g = g->ev_next)
    for (int k = 0; k < EV_COUNT; k++) n += g->ev_n[k] > 0;
  double *batch = n ? calloc(EVENT_SLOTS * n + 1, sizeof(double)) : NULL;
  size_t i = 1;
  for (group_t *g = e->evq, *next; g; g = next) {
    next = g->ev_next;
    for (int k = 0; k < EV_COUNT; k++) {
      if (g->ev_n[k] > 0 && batch) {
        batch[i] = g->id;
        batch[i + 1] = k;
        batch[i + 2] = g->ev_detail[k];
        /* Raw bytes in two doubles: JavaScript reads them through a Uint8Array, never as numbers. */
        if (k == EV_BLOCKED) memcpy(batch + i + 3, g->ev_client, 16);
        i += EVENT_SLOTS;
      }
      g->ev_n[k] = 0;
    }
    g->ev_queued = 0;
  }
  e->evq = NULL;
  if (!batch) return; /* nothing to say (or no memory: only log lines are lost, never counts) */
  batch[0] = (double)(EVENT_SLOTS * n);
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
  int64_t tick = MAX_TICK_MS;
  while (!e->stop) {
    int n = epoll_wait(e->epfd, evs, EVENTS_PER_WAIT, (int)tick);
    int64_t now = now_ms();
    int commands = 0;
    for (int i = 0; i < n; i++) {
      watch_t *w = evs[i].data.ptr;
      if (w->kind == W_EVENT)
        commands = 1;
      else if (w->kind == W_TCP) {
        /* A connection still dialling belongs to accept.c; once connected, to the relay. */
        conn_t *c = w->owner;
        if (c->dialing && !c->dead)
          dial_event(e, c, w->side, evs[i].events, now);
        else
          tcp_event(e, c, w->side, evs[i].events, now);
      } else if (w->kind == W_TCP_LISTENER)
        tcp_listener_event(e, w->owner, now);
      else if (w->kind == W_UDP_LISTENER) {
        if (!((group_t *)w->owner)->closed) udp_listener_event(e, w->owner, now);
      } else if (w->kind == W_UDP_FLOW)
        udp_flow_event(e, w->owner, now);
      /* A flow closed earlier in this batch is only ever closed by a command or the sweep,
       * which run after the batch, so W_UDP_FLOW pointers here are live. */
    }
    if (commands) run_commands(e);
    /* One walk over the groups: sweeps, connect timeouts, and the wait until the next of them. */
    pthread_mutex_lock(&e->mu);
    group_t *groups = e->groups;
    pthread_mutex_unlock(&e->mu);
    tick = MAX_TICK_MS;
    for (group_t *g = groups; g; g = g->next) {
      sweep(e, g, now);
      if (g->sweep_ms < tick) tick = g->sweep_ms;
      int64_t t = g->kind == W_TCP ? tcp_timers(e, g, now) : -1;
      if (t >= 0 && t < tick) tick = t;
    }
    pool_trim(e, now);
    flush(e);
  }
  for (group_t *g = e->groups; g; g = g->next) group_close(e, g);
  for (group_t *g = e->evq; g; g = g->ev_next) g->ev_queued = 0;
  e->evq = NULL; /* the environment is going away: nobody to tell */
  flush(e);
  return NULL;
}
