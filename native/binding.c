/*
 * The N-API face of the native engine: splice(2) relay for TCP, batched UDP, on one epoll thread
 * per Node environment (the main thread in docker mode, each worker in standalone mode).
 *
 * Contract with JavaScript (src/data-path/native-engine.ts is the only caller; the tables it shares with
 * us are the `contract` export, compared at load):
 * - init(onEvents)                     once per environment; onEvents(batch) receives a
 *                                      Float64Array of eventSlots doubles per event (engine.h EVENTS).
 * - tcpGroup(...COMMON, connectMs, idleMs, lingerMs, pipeBytes, maxConns, proxy, connFds)
 *                                      -> group; dups the listening socket and serves it: accept,
 *                                      caps, access lists, dial, PROXY header, splice relay.
 * - udpGroup(...COMMON, idleMs, maxFlows, wildcard, perSource)
 *                                      -> group; dups the bound socket and serves every flow.
 *   COMMON = id, counters: Float64Array, listenerFd, target: Buffer(4|16), targetPort, scopeId,
 *            allow, deny: Buffer | null (ACL records), budget: Int32Array | null, budgetLimit,
 *            budgetOwn
 * - groupFd(group)                     our listening socket's fd (-1 once closed)
 * - groupStop(group, how)              what is open goes on (returns once done); how 0 (drain):
 *                                      TCP closes the listener, the port is free; UDP opens no new
 *                                      flow. 1 (hand-over): UDP reads no more datagrams (another
 *                                      engine does), flows relay replies until idle. 2 (release):
 *                                      the listener closes, the port is free, flows live on and
 *                                      drop the target's replies until a group adopts them.
 * - groupAdopt(group, from)            UDP: from's flows move to group (the same mapping again,
 *                                      after its dockerd restarted): their replies leave from it.
 * - groupClose(group)                  closes everything of the group (a reset where bytes are
 *                                      pending, else FIN; no drain); returns once done.
 * - contract                           { events, eventSlots, tcpCounters, connectBuckets,
 *                                      lifetimeBuckets, udpCounters, aclRecordBytes, udpFlowBuffer }
 * Errors are thrown with the code UPROXY_ERR_NATIVE (src/core/errors.ts).
 * - shutdown()                       stops the thread (process 'exit'); everything it held closes.
 * - unread(fd)                       FIONREAD of a socket JavaScript owns (its forced closes), or -1
 * - resetOnClose(fd, on)             arms or disarms SO_LINGER {1, 0} on a socket JavaScript owns
 * - timeWaitMark(fd)                 a Buffer naming fd's connection for timeWaitEnd (time-wait.c's
 *                                    tw_mark), or an errno; the JavaScript engine's target sockets
 * - timeWaitEnd(fd, mark)            tw_end: 0, or the errno it failed with (ENOENT: nothing to end)
 * - groupsOpen()                     groups on the thread's list (a closed one leaves it)
 * Counters and histograms live in the caller's Float64Array: only this thread writes them,
 * JavaScript reads them at scrape time (aligned 8-byte stores are atomic on the 64-bit targets
 * we build for).
 *
 * Ownership: JavaScript has bound (or adopted) the listening socket and closes its own fd right
 * after the group is made, before its event loop could accept: from then on only this thread
 * accepts. Every fd we hold is removed from our epoll before close: a registration follows the
 * open file description, not the fd number.
 */
#include "engine.h"

#include <sys/ioctl.h>

#include "napi-util.h"

/* ---------- N-API ---------- */

/* This environment's engine (made by init()), or a thrown error. */
static engine_t *engine_of(napi_env env) {
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  if (!e) napi_throw_error(env, NATIVE_ERROR, "native engine not initialised");
  return e;
}

/* Queues a command for the thread, wakes it and waits until it ran (at most 2 s); -ENOMEM if it
 * cannot be queued. The thread runs commands as soon as it wakes. */
static int run(engine_t *e, int op, group_t *g, group_t *src) {
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (!cmd) return -ENOMEM;
  cmd->op = op;
  cmd->g = g;
  cmd->src = src;
  pthread_mutex_lock(&e->mu);
  *e->cmds_tail = cmd;
  e->cmds_tail = &cmd->next;
  uint64_t seq = ++e->posted;
  pthread_mutex_unlock(&e->mu);
  uint64_t one = 1;
  while (write(e->evfd, &one, sizeof one) < 0 && errno == EINTR) {}
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 2;
  pthread_mutex_lock(&e->mu);
  while (e->started && e->done < seq && pthread_cond_timedwait(&e->done_cv, &e->mu, &until) == 0) {}
  pthread_mutex_unlock(&e->mu);
  return 0;
}

/* Open groups keep the event loop alive, as their listening sockets did. */
static void hold(napi_env env, engine_t *e, int delta) {
  e->refs += delta;
  if (e->refs > 0 && !e->refed) {
    napi_ref_threadsafe_function(env, e->tsfn);
    e->refed = 1;
  } else if (e->refs <= 0 && e->refed) {
    napi_unref_threadsafe_function(env, e->tsfn);
    e->refed = 0;
  }
}

/* On the JS thread: hands one batch of events to onEvents as a Float64Array. */
static void call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  (void)ctx;
  double *batch = data;
  if (env != NULL) {
    size_t n = (size_t)batch[0];
    napi_value buf, arr, undef;
    void *mem;
    if (napi_create_arraybuffer(env, n * sizeof(double), &mem, &buf) == napi_ok &&
        napi_create_typedarray(env, napi_float64_array, n, buf, 0, &arr) == napi_ok) {
      memcpy(mem, batch + 1, n * sizeof(double));
      napi_get_undefined(env, &undef);
      napi_call_function(env, undef, cb, 1, &arr, NULL);
    }
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

/* Environment cleanup hook: joins the thread, then frees everything it left. */
static void engine_teardown(void *arg) {
  engine_t *e = arg;
  engine_stop(e);
  for (int i = 0; i < e->npool; i++) pipe_close(e, &e->pool[i]);
  while (e->cmds) {
    cmd_t *c = e->cmds;
    e->cmds = c->next;
    free(c);
  }
  /* Groups JavaScript still holds are freed by their external's finalizer, if it ever runs. */
  while (e->groups) {
    group_t *g = e->groups;
    e->groups = g->next;
    if (g->lfd >= 0) close(g->lfd);
    g->lfd = -1;
    if (__atomic_sub_fetch(&g->owners, 1, __ATOMIC_ACQ_REL) == 0) {
      free(g->table);
      free(g->allow);
      free(g->deny);
      free(g);
    }
  }
  while (e->retired) {
    group_t *g = e->retired;
    e->retired = g->retired_next;
    free(g->table);
    free(g->allow);
    free(g->deny);
    free(g);
  }
  close(e->epfd);
  close(e->evfd);
  if (e->nl >= 0) close(e->nl);
  free(e->io);
  while (e->quotas) {
    e->quotas->refs = 1;
    quota_put(e, e->quotas);
  }
  pthread_cond_destroy(&e->done_cv);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

/* init(onClose): the engine of this environment, its epoll, eventfd and thread. */
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
  e->nl = -1;
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
  pthread_cond_init(&e->done_cv, NULL);
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

/* An integer argument, or -1. */
static int get_i64(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok ? 0 : -1;
}

/* Frees a group that never reached the thread. */
static void group_free(napi_env env, group_t *g) {
  if (g->lfd >= 0) close(g->lfd);
  free(g->table);
  free(g->allow);
  free(g->deny);
  if (g->ctr_ref) napi_delete_reference(env, g->ctr_ref);
  if (g->budget_ref) napi_delete_reference(env, g->budget_ref);
  free(g);
}

/* Frees the groups the thread retired last (their counters' references are JavaScript's). */
static void reap(napi_env env, engine_t *e) {
  pthread_mutex_lock(&e->mu);
  group_t *list = e->retired;
  e->retired = NULL;
  pthread_mutex_unlock(&e->mu);
  while (list) {
    group_t *g = list;
    list = g->retired_next;
    group_free(env, g);
  }
}

/* One owner of a group lets go: the thread when it retires it (closed, off its list), JavaScript
 * when its external is collected. The last one frees it; napi references can only be deleted on
 * the main thread, so a group the thread lets go last waits on e->retired for reap(). */
void group_release(engine_t *e, group_t *g, int from_thread) {
  if (__atomic_sub_fetch(&g->owners, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (from_thread) {
    pthread_mutex_lock(&e->mu);
    g->retired_next = e->retired;
    e->retired = g;
    pthread_mutex_unlock(&e->mu);
  }
}

/* The finalizer of a group's external: JavaScript dropped the group. */
static void group_finalize(napi_env env, void *data, void *hint) {
  group_t *g = data;
  (void)hint;
  if (__atomic_sub_fetch(&g->owners, 1, __ATOMIC_ACQ_REL) == 0) group_free(env, g);
}

/* acl: Buffer of ACL_RECORD_BYTES entries [family 4|6, prefix, 16 address bytes], or null. */
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

/* The length of a budget Int32Array (already checked by new_group). */
static size_t blen_of(napi_env env, napi_value v) {
  size_t n = 0;
  napi_get_typedarray_info(env, v, NULL, &n, NULL, NULL, NULL);
  return n;
}

#define COMMON_ARGS 11
/* A group from the arguments both kinds share (binding contract: COMMON), with our own dup of
 * the listener; NULL with an exception pending when an argument is wrong or the dup fails. */
static group_t *new_group(napi_env env, napi_value *argv, int kind, size_t slots) {
  int64_t gid, lfd, port, scope, budget_limit, budget_own;
  napi_typedarray_type type;
  size_t len, tlen;
  void *data, *taddr;
  if (get_i64(env, argv[0], &gid) < 0 ||
      napi_get_typedarray_info(env, argv[1], &type, &len, &data, NULL, NULL) != napi_ok || type != napi_float64_array ||
      len < slots || get_i64(env, argv[2], &lfd) < 0 || napi_get_buffer_info(env, argv[3], &taddr, &tlen) != napi_ok ||
      (tlen != 4 && tlen != 16) || get_i64(env, argv[4], &port) < 0 || get_i64(env, argv[5], &scope) < 0 ||
      get_i64(env, argv[9], &budget_limit) < 0 || get_i64(env, argv[10], &budget_own) < 0) {
    throw_errno(env, EINVAL, "group arguments");
    return NULL;
  }
  int32_t *budget = NULL;
  napi_valuetype bt;
  napi_typeof(env, argv[8], &bt);
  if (bt != napi_null && bt != napi_undefined) {
    size_t blen;
    void *bdata;
    if (napi_get_typedarray_info(env, argv[8], &type, &blen, &bdata, NULL, NULL) != napi_ok ||
        type != napi_int32_array || budget_own < 0 || (size_t)budget_own + 2 >= blen) {
      throw_errno(env, EINVAL, "group budget");
      return NULL;
    }
    budget = bdata;
  }
  group_t *g = calloc(1, sizeof *g);
  if (!g) {
    throw_errno(env, ENOMEM, "group");
    return NULL;
  }
  g->id = (int)gid;
  g->kind = kind;
  g->ctr = data;
  g->lfd = -1;
  if (read_acl(env, argv[6], &g->allow, &g->nallow) < 0 || read_acl(env, argv[7], &g->deny, &g->ndeny) < 0) {
    group_free(env, g);
    throw_errno(env, EINVAL, "group access lists");
    return NULL;
  }
  g->lfd = fcntl((int)lfd, F_DUPFD_CLOEXEC, 0);
  if (g->lfd < 0) {
    int err = errno;
    group_free(env, g);
    throw_errno(env, err, "group listener");
    return NULL;
  }
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
  g->budget = budget;
  g->budget_len = budget ? blen_of(env, argv[8]) : 0;
  g->budget_limit = budget_limit;
  g->budget_own = (int)budget_own;
  napi_create_reference(env, argv[1], 1, &g->ctr_ref); /* keeps the counters' memory alive */
  if (budget) napi_create_reference(env, argv[8], 1, &g->budget_ref);
  return g;
}

/* Registers the group's listener with the thread's epoll, publishes the group to its sweeps and
 * holds the event loop; the group as the external value JavaScript holds, or NULL (thrown). */
static napi_value start_group(napi_env env, engine_t *e, group_t *g, uint32_t events) {
  /* Every group of an environment shares its one fd budget; pipes are taken from it too. */
  if (!e->budget && g->budget) e->budget = g;
  g->lw.kind = g->kind == W_TCP ? W_TCP_LISTENER : W_UDP_LISTENER;
  g->lw.owner = g;
  struct epoll_event ev = { .events = events, .data.ptr = &g->lw };
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, g->lfd, &ev) < 0) {
    int err = errno;
    quota_put(e, g->quota);
    group_free(env, g);
    return throw_errno(env, err, "group epoll");
  }
  napi_value ext;
  if (napi_create_external(env, g, group_finalize, NULL, &ext) != napi_ok) {
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, g->lfd, NULL);
    quota_put(e, g->quota);
    group_free(env, g);
    return NULL;
  }
  g->owners = 2; /* the thread's list and the external */
  pthread_mutex_lock(&e->mu);
  g->next = e->groups;
  e->groups = g;
  pthread_mutex_unlock(&e->mu);
  hold(env, e, 1);
  reap(env, e);
  return ext;
}

/* The group of an external value, or a thrown error. */
static group_t *unwrap_group(napi_env env, napi_value v) {
  group_t *g = NULL;
  if (napi_get_value_external(env, v, (void **)&g) != napi_ok || !g)
    napi_throw_type_error(env, NATIVE_ERROR, "not a group");
  return g;
}

/* How often a TCP group is swept: a quarter of its shortest timeout, 25 ms to MAX_TICK_MS. */
static int64_t sweep_period(int64_t a, int64_t b) {
  int64_t p = MAX_TICK_MS;
  if (a > 0 && a / 4 < p) p = a / 4;
  if (b > 0 && b / 4 < p) p = b / 4;
  return p < 25 ? 25 : p;
}

/* The call's first n arguments (missing ones are undefined) and this environment's engine; NULL
 * with an exception pending when either cannot be had. */
static engine_t *call_args(napi_env env, napi_callback_info info, napi_value *argv, size_t n) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, NATIVE_ERROR, "napi_get_cb_info failed");
    return NULL;
  }
  return engine_of(env);
}

/* tcpGroup(...COMMON, connectMs, idleMs, lingerMs, pipeBytes, maxConns, proxy, connFds). */
static napi_value js_tcp_group(napi_env env, napi_callback_info info) {
  napi_value argv[COMMON_ARGS + 7];
  engine_t *e = call_args(env, info, argv, COMMON_ARGS + 7);
  if (!e) return NULL;
  napi_value *a = argv + COMMON_ARGS;
  int64_t connect, idle, linger, pipe_bytes, max_conns, proxy, conn_fds;
  if (get_i64(env, a[0], &connect) < 0 || get_i64(env, a[1], &idle) < 0 || get_i64(env, a[2], &linger) < 0 ||
      get_i64(env, a[3], &pipe_bytes) < 0 || get_i64(env, a[4], &max_conns) < 0 || get_i64(env, a[5], &proxy) < 0 ||
      get_i64(env, a[6], &conn_fds) < 0 || proxy < 0 || proxy > 2)
    return throw_errno(env, EINVAL, "tcpGroup");
  group_t *g = new_group(env, argv, W_TCP, TCP_SLOTS);
  if (!g) return NULL;
  g->connect_ms = connect;
  g->idle_ms = idle;
  g->linger_ms = linger;
  g->sweep_ms = sweep_period(idle, linger);
  g->pipe_bytes = (size_t)pipe_bytes;
  g->max_conns = max_conns;
  g->proxy = (int)proxy;
  g->conn_fds = (int)conn_fds;
  listener_options(g->lfd);
  /* Level-triggered: a batch of accepts per wakeup, the rest on the next turn. */
  return start_group(env, e, g, EPOLLIN);
}

/* udpGroup(...COMMON, idleMs, maxFlows, wildcard, perSource). */
static napi_value js_udp_group(napi_env env, napi_callback_info info) {
  napi_value argv[COMMON_ARGS + 4];
  engine_t *e = call_args(env, info, argv, COMMON_ARGS + 4);
  if (!e) return NULL;
  napi_value *a = argv + COMMON_ARGS;
  int64_t idle, max_flows, per_source;
  bool wildcard;
  if (get_i64(env, a[0], &idle) < 0 || get_i64(env, a[1], &max_flows) < 0 ||
      napi_get_value_bool(env, a[2], &wildcard) != napi_ok || get_i64(env, a[3], &per_source) < 0)
    return throw_errno(env, EINVAL, "udpGroup");
  group_t *g = new_group(env, argv, W_UDP_LISTENER, U_COUNT);
  if (!g) return NULL;
  struct sockaddr_storage local;
  socklen_t llen = sizeof local;
  if (getsockname(g->lfd, (struct sockaddr *)&local, &llen) < 0) {
    int err = errno;
    group_free(env, g);
    return throw_errno(env, err, "udpGroup listener");
  }
  g->lfamily = local.ss_family;
  g->wildcard = wildcard;
  g->idle_ms = idle;
  g->max_flows = (int)max_flows;
  g->per_source = per_source > 0 ? (int)per_source : 1;
  int64_t p = idle / 10;
  g->sweep_ms = p < 50 ? 50 : p > MAX_TICK_MS ? MAX_TICK_MS : p;
  int on = 1;
  if (g->lfamily == AF_INET)
    setsockopt(g->lfd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
  else
    setsockopt(g->lfd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
  g->quota = quota_get(e, g->ctr);
  if (!g->quota || table_grow(g) < 0) {
    quota_put(e, g->quota);
    group_free(env, g);
    return throw_errno(env, ENOMEM, "udpGroup");
  }
  return start_group(env, e, g, EPOLLIN);
}

/* groupFd(group): our listening socket's fd, -1 once closed (read racily: only right after the
 * group is made, to hand a copy to a shim). */
static napi_value js_group_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  group_t *g = unwrap_group(env, argv[0]);
  if (!g) return NULL;
  napi_create_int32(env, g->lfd, &result);
  return result;
}

/* groupStop(group, how): what is open carries on; see the contract above for how. */
static napi_value js_group_stop(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t how;
  engine_t *e = call_args(env, info, argv, 2);
  group_t *g = e ? unwrap_group(env, argv[0]) : NULL;
  if (!g) return NULL;
  if (get_i64(env, argv[1], &how) < 0 || how < 0 || how > 2) {
    napi_throw_error(env, NATIVE_ERROR, "groupStop: how must be 0, 1 or 2");
    return NULL;
  }
  g->draining = 1;
  /* TCP's drain and every release close the listener; the hand-over only stops reading it. */
  int op = how == 1 ? C_UNWATCH_GROUP : (g->kind == W_TCP || how == 2) ? C_STOP_GROUP : -1;
  if (op >= 0 && !g->js_closed && run(e, op, g, NULL) < 0) return throw_errno(env, ENOMEM, "groupStop");
  return NULL;
}

/* groupAdopt(group, from): from's UDP flows move to group (see udp.c flows_adopt). */
static napi_value js_group_adopt(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  engine_t *e = call_args(env, info, argv, 2);
  group_t *g = e ? unwrap_group(env, argv[0]) : NULL;
  group_t *from = g ? unwrap_group(env, argv[1]) : NULL;
  if (!from) return NULL;
  if (!g->js_closed && !from->js_closed && run(e, C_ADOPT_FLOWS, g, from) < 0)
    return throw_errno(env, ENOMEM, "groupAdopt");
  return NULL;
}

/* groupClose(group): closes everything of the group and returns once done (the port is free). */
static napi_value js_group_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  engine_t *e = call_args(env, info, argv, 1);
  group_t *g = e ? unwrap_group(env, argv[0]) : NULL;
  if (!g || g->js_closed) return NULL;
  if (run(e, C_CLOSE_GROUP, g, NULL) < 0) return throw_errno(env, ENOMEM, "groupClose");
  g->js_closed = 1;
  hold(env, e, -1);
  reap(env, e);
  return NULL;
}

/* groupsOpen(): how many groups the thread walks on each wakeup (closed ones leave: audit N6). */
static napi_value js_groups_open(napi_env env, napi_callback_info info) {
  (void)info;
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  int n = 0;
  if (e) {
    pthread_mutex_lock(&e->mu);
    for (group_t *g = e->groups; g; g = g->next) n++;
    pthread_mutex_unlock(&e->mu);
  }
  napi_value result;
  napi_create_int32(env, n, &result);
  return result;
}

/* Called on process 'exit': exit() must not run while our thread still uses the runtime. */
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  (void)info;
  engine_t *e = NULL;
  napi_get_instance_data(env, (void **)&e);
  if (e) engine_stop(e);
  return NULL;
}

/* unread(fd): bytes waiting in the socket's receive buffer (FIONREAD), or -1. The JavaScript
 * engine asks before a forced close: bytes the kernel acknowledged but nobody will relay mean the
 * other side must get a reset, not a FIN that would pass a truncated stream off as complete. */
static napi_value js_unread(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int fd = -1, n = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1)
    napi_get_value_int32(env, argv[0], &fd);
  if (fd < 0 || ioctl(fd, FIONREAD, &n) < 0) n = -1;
  napi_create_int32(env, n, &result);
  return result;
}

/* resetOnClose(fd, on): arms (1) or disarms (0) SO_LINGER {1, 0} on a socket JavaScript owns
 * (engine.h's reset_on_close): the JavaScript engine's relayed sockets are armed from accept and
 * dial on, so that a process death resets them (audit N4), and disarmed before a clean close. */
static napi_value js_reset_on_close(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int fd = -1;
  bool on = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 2) {
    napi_get_value_int32(env, argv[0], &fd);
    napi_get_value_bool(env, argv[1], &on);
  }
  if (fd >= 0) reset_on_close(fd, on);
  return NULL;
}

/* timeWaitMark(fd): tw_mark of a socket JavaScript owns, as a Buffer; an errno (a number) if it
 * failed. The JavaScript engine calls it when its FIN to the target goes out first. */
static napi_value js_time_wait_mark(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1)
    napi_get_value_int32(env, argv[0], &fd);
  tw_id_t t;
  int r = fd >= 0 ? tw_mark(fd, &t) : -EBADF;
  if (r < 0) {
    napi_create_int32(env, -r, &result);
    return result;
  }
  void *data;
  napi_create_buffer_copy(env, sizeof t, &t, &data, &result);
  return result;
}

/* timeWaitEnd(fd, mark): tw_end of that socket, on this thread's own sock_diag socket; 0 or an
 * errno. */
static napi_value js_time_wait_end(napi_env env, napi_callback_info info) {
  static __thread int nl = -1; /* one per thread: workers call it too; closed with the process */
  size_t argc = 2;
  napi_value argv[2], result;
  int fd = -1;
  void *mark = NULL;
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 2) {
    napi_get_value_int32(env, argv[0], &fd);
    napi_get_buffer_info(env, argv[1], &mark, &len);
  }
  int r = fd >= 0 && mark && len == sizeof(tw_id_t) ? tw_end(&nl, fd, mark) : -EINVAL;
  napi_create_int32(env, -r, &result);
  return result;
}

/* A JS array of the given strings. */
static napi_value names_array(napi_env env, const char *const *names, size_t n) {
  napi_value arr, v;
  napi_create_array_with_length(env, n, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_create_string_utf8(env, names[i], NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, (uint32_t)i, v);
  }
  return arr;
}

/* obj[key] = value. */
static void set_int(napi_env env, napi_value obj, const char *key, int64_t value) {
  napi_value v;
  napi_create_int64(env, value, &v);
  napi_set_named_property(env, obj, key, v);
}

/* A JS array of the given numbers. */
static napi_value numbers_array(napi_env env, const double *xs, size_t n) {
  napi_value arr, v;
  napi_create_array_with_length(env, n, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_create_double(env, xs[i], &v);
    napi_set_element(env, arr, (uint32_t)i, v);
  }
  return arr;
}

/* The contract export: { events: [names in value order], eventSlots, tcpCounters: [...],
 * connectBuckets, lifetimeBuckets, udpCounters: [...], aclRecordBytes, udpFlowBuffer }. */
static napi_value make_contract(napi_env env) {
#define ENUM_NAME(id, name) name,
  static const char *const events[] = { EVENTS(ENUM_NAME) };
  static const char *const tcp[] = { TCP_COUNTERS(ENUM_NAME) };
  static const char *const udp[] = { UDP_COUNTERS(ENUM_NAME) };
  napi_value c;
  napi_create_object(env, &c);
  napi_set_named_property(env, c, "events", names_array(env, events, EV_COUNT));
  set_int(env, c, "eventSlots", EVENT_SLOTS);
  napi_set_named_property(env, c, "tcpCounters", names_array(env, tcp, T_COUNT));
  napi_set_named_property(env, c, "connectBuckets", numbers_array(env, connect_bounds, N_CONNECT_BOUNDS));
  napi_set_named_property(env, c, "lifetimeBuckets", numbers_array(env, lifetime_bounds, N_LIFETIME_BOUNDS));
  napi_set_named_property(env, c, "udpCounters", names_array(env, udp, U_COUNT));
  set_int(env, c, "aclRecordBytes", ACL_RECORD_BYTES);
  set_int(env, c, "udpFlowBuffer", UDP_FLOW_BUFFER);
  return c;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL },
    { "tcpGroup", NULL, js_tcp_group, NULL, NULL, NULL, napi_default, NULL },
    { "groupFd", NULL, js_group_fd, NULL, NULL, NULL, napi_default, NULL },
    { "udpGroup", NULL, js_udp_group, NULL, NULL, NULL, napi_default, NULL },
    { "groupStop", NULL, js_group_stop, NULL, NULL, NULL, napi_default, NULL },
    { "groupClose", NULL, js_group_close, NULL, NULL, NULL, napi_default, NULL },
    { "groupsOpen", NULL, js_groups_open, NULL, NULL, NULL, napi_default, NULL },
    { "groupAdopt", NULL, js_group_adopt, NULL, NULL, NULL, napi_default, NULL },
    { "shutdown", NULL, js_shutdown, NULL, NULL, NULL, napi_default, NULL },
    { "unread", NULL, js_unread, NULL, NULL, NULL, napi_default, NULL },
    { "resetOnClose", NULL, js_reset_on_close, NULL, NULL, NULL, napi_default, NULL },
    { "timeWaitMark", NULL, js_time_wait_mark, NULL, NULL, NULL, napi_default, NULL },
    { "timeWaitEnd", NULL, js_time_wait_end, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "contract", make_contract(env));
  control_define(env, exports);
  return exports;
}
