/*
 * The shared engine's control socket (issue 13): the engine side of native/shim.c's protocol,
 * on the JS thread's own libuv loop (uv_poll), since Node has no API to pass file descriptors
 * over an arbitrary unix socket. This file only moves messages and descriptors; what they mean is
 * src/shared-engine/engine.ts's business.
 *
 * Contract with JavaScript (src/shared-engine/engine-protocol.ts is the only caller):
 * - ctlListen(fdOrName, onMessage, onClose)  serve the listening AF_UNIX SOCK_SEQPACKET socket
 *       inherited as fd, or bind the socket of that engine name (ctl-msg.h: under the start-up
 *       lock); throws with the errno text (EADDRINUSE: an engine already serves this namespace). Peers that are neither root nor our uid are
 *       answered "1<reason>" and closed here, never seen by JavaScript (SO_PEERCRED).
 *       onMessage(conn, Buffer, fd)  one message, fd = the descriptor it carried or -1 (ours now)
 *       onClose(conn)                the peer is gone (EOF, reset); conn is closed
 * - ctlSend(conn, Buffer, fd)  one message, with fd when >= 0 (the peer gets its own copy);
 *       returns false if the peer is gone. Never blocks (audit N12): a message without fd that
 *       does not fit the socket now is queued and sent as the peer reads (at most CTL_QUEUE_MAX
 *       bytes, else the peer is dropped); a message with fd is only sent at once.
 * - ctlClose(conn)             closes conn (no onClose), once what is queued went out (within
 *       CTL_SEND_TIMEOUT_MS of the peer reading nothing)
 * - ctlStopListening()         closes the listening socket (the engine is exiting)
 * - ctlRequest(name, Buffer, timeoutMs)  a client (userland-proxy ls): sends one message and
 *       returns the replies up to one starting with 'E', as an array of Buffers; only an engine of
 *       our own uid is asked (SO_PEERCRED), and nothing blocks past timeoutMs
 * - ctlPath(name)              the socket path of engine `name` in this network namespace
 * - ctlTakeOver(name, timeoutMs)  a new engine takes the name and the mappings of the running one
 *       (hand-over): [its listening fd, the old engine's answer to U]
 * conn is the connection's fd number: unique while open, and JavaScript forgets it at onClose.
 */
#include "engine.h"

#include <poll.h>
#include <stddef.h>
#include <sys/un.h>
#include <uv.h>

#include "ctl-msg.h"
#include "napi-util.h"

#define CTL_MSG_MAX 65536
#define CTL_SEND_TIMEOUT_MS 1000 /* a closed peer that reads nothing of its queue for this long is dropped */
#define CTL_QUEUE_MAX (16 << 20) /* bytes queued for one peer (a listing of ~50 000 mappings) */

/* A message waiting for the peer to read (ctlSend, when the socket is full). */
typedef struct out_msg {
  struct out_msg *next;
  size_t len;
  char data[];
} out_msg_t;

typedef struct ctl_conn {
  uv_poll_t poll;
  int fd;
  out_msg_t *out, **out_tail;
  size_t queued;
  int closing; /* JavaScript closed it: it goes once the queue is out, or at the deadline */
  uint64_t deadline;
} ctl_conn_t;

static napi_env ctl_env;
static napi_ref on_message, on_close;
static napi_async_context async_ctx;
static uv_poll_t listener;
static int listener_fd = -1;
static ctl_conn_t **conns; /* by fd */
static int nconns;
static char *rbuf;

/* Calls a JS callback from a libuv callback: its own scope, microtasks run after, and a throw
 * becomes an uncaughtException as it would for any Node callback. */
static void call(napi_ref ref, size_t argc, napi_value *argv) {
  napi_handle_scope scope;
  napi_open_handle_scope(ctl_env, &scope);
  napi_value fn, recv, result;
  napi_get_reference_value(ctl_env, ref, &fn);
  napi_get_global(ctl_env, &recv); /* MakeCallback needs an object receiver */
  if (napi_make_callback(ctl_env, async_ctx, recv, fn, argc, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(ctl_env, &err);
    napi_fatal_exception(ctl_env, err);
  }
  napi_close_handle_scope(ctl_env, scope);
}

/* Closes a connection so that the peer reads what we sent before EOF: closing a unix socket with
 * unread data in its queue makes the peer's next recv fail with ECONNRESET instead, losing the
 * reply. After shutdown nothing more can arrive (the peer's send gets EPIPE), so one drain empties
 * the queue. */
static void close_gently(int fd) {
  char sink[256];
  shutdown(fd, SHUT_RDWR);
  while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {}
  close(fd);
}

/* libuv's close callback of a connection's poll handle: now its fd closes, with what was queued. */
static void free_conn(uv_handle_t *h) {
  ctl_conn_t *c = h->data;
  close_gently(c->fd);
  while (c->out) {
    out_msg_t *m = c->out;
    c->out = m->next;
    free(m);
  }
  free(c);
}

/* Forgets connection fd: polling stops now, the fd closes in free_conn once libuv lets go. */
static void drop_conn(int fd) {
  if (fd < 0 || fd >= nconns || !conns[fd]) return;
  ctl_conn_t *c = conns[fd];
  conns[fd] = NULL;
  uv_close((uv_handle_t *)&c->poll, free_conn); /* stops polling; the fd closes after */
}

static void on_conn(uv_poll_t *p, int status, int events);

/* Sends what is queued, as far as the socket takes it; then reads only again, or, when
 * JavaScript closed the connection, closes it. */
static void flush(ctl_conn_t *c) {
  while (c->out) {
    out_msg_t *m = c->out;
    if (ctl_send(c->fd, m->data, m->len, -1, MSG_DONTWAIT) < 0) {
      if (errno == EAGAIN) return;
      break; /* the peer is gone: the read side reports it */
    }
    c->out = m->next;
    c->queued -= m->len;
    free(m);
    if (c->closing) c->deadline = uv_now(c->poll.loop) + CTL_SEND_TIMEOUT_MS; /* it reads: wait on */
  }
  if (c->out) return;
  c->out_tail = &c->out;
  if (c->closing)
    drop_conn(c->fd);
  else
    uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_conn);
}

/* Closed connections whose peer does not read what is queued go at their deadline. */
static uv_timer_t sweeper;
static int sweeping;
/* Periodically while any connection is closing: drops those past their deadline. */
static void sweep(uv_timer_t *t) {
  int left = 0;
  for (int fd = 0; fd < nconns; fd++) {
    ctl_conn_t *c = conns[fd];
    if (!c || !c->closing) continue;
    if (uv_now(t->loop) >= c->deadline)
      drop_conn(fd);
    else
      left = 1;
  }
  if (!left) {
    uv_timer_stop(t);
    sweeping = 0;
  }
}

/* A connection's poll event: flushes its queue when writable; reads up to 16 messages (each with
 * at most one fd) for JavaScript's onMessage, and reports EOF or an error as onClose. */
static void on_conn(uv_poll_t *p, int status, int events) {
  ctl_conn_t *c = p->data;
  int fd = c->fd;
  if (events & UV_WRITABLE) flush(c);
  if (conns[fd] != c || c->closing) return; /* JavaScript is done with it: nothing more is read */
  for (int round = 0; round < 16 && conns[fd] == c; round++) {
    int got;
    ssize_t n = ctl_recv(fd, rbuf, CTL_MSG_MAX, &got, MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN) return;
    napi_handle_scope scope;
    napi_open_handle_scope(ctl_env, &scope);
    napi_value argv[3];
    napi_create_int32(ctl_env, fd, &argv[0]);
    if (n <= 0) {
      drop_conn(fd);
      call(on_close, 1, argv);
    } else {
      void *data;
      napi_create_buffer_copy(ctl_env, (size_t)n, rbuf, &data, &argv[1]);
      napi_create_int32(ctl_env, got, &argv[2]);
      call(on_message, 3, argv);
    }
    napi_close_handle_scope(ctl_env, scope);
    if (n <= 0) return;
  }
}

/* Tells a peer why it is refused (one message, never blocking) and closes it. */
static void refuse(int fd, const char *why) {
  send(fd, why, strlen(why), MSG_NOSIGNAL | MSG_DONTWAIT);
  close_gently(fd);
}

/* The control socket is readable: accepts every waiting peer of root or our own uid (SO_PEERCRED)
 * and polls it; refuses anyone else with a reason. */
static void on_accept(uv_poll_t *p, int status, int events) {
  for (;;) {
    int fd = accept4(listener_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return; /* EAGAIN, or EMFILE: the peer waits in the backlog until fds free up */
    long uid = ctl_peer_uid(fd);
    if (uid != 0 && uid != (long)geteuid()) {
      char why[120];
      snprintf(
          why, sizeof why, "1the shared engine serves only root and uid %u, not uid %ld", (unsigned)geteuid(), uid);
      refuse(fd, why);
      continue;
    }
    if (fd >= nconns) {
      int n = fd * 2 + 16;
      ctl_conn_t **more = realloc(conns, (size_t)n * sizeof *more);
      if (!more) {
        refuse(fd, "1the shared engine is out of memory");
        continue;
      }
      memset(more + nconns, 0, (size_t)(n - nconns) * sizeof *more);
      conns = more;
      nconns = n;
    }
    ctl_conn_t *c = calloc(1, sizeof *c);
    uv_loop_t *loop;
    napi_get_uv_event_loop(ctl_env, &loop);
    if (!c || uv_poll_init(loop, &c->poll, fd) != 0) {
      free(c);
      refuse(fd, "1the shared engine cannot watch the connection");
      continue;
    }
    c->fd = fd;
    c->poll.data = c;
    conns[fd] = c;
    uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_conn);
    /* A shim sends its registration right after connect(), before we accept: read it now
     * rather than one event-loop turn later (it is on every dockerd start's critical path). */
    on_conn(&c->poll, 0, UV_READABLE);
  }
}

/* ctlListen(fdOrName, onMessage, onClose): serves the control socket given (an inherited fd) or
 * bound under `name` (ctl_path, under the start-up lock) on the JS thread's loop. */
static napi_value js_ctl_listen(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (get_args(env, info, 3, argv) < 0) return NULL;
  if (listener_fd >= 0) return throw_errno(env, EBUSY, "ctlListen");
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  int fd;
  if (t == napi_number) {
    napi_get_value_int32(env, argv[0], &fd);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return throw_errno(env, errno, "control socket");
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  } else {
    char name[CTL_PATH_MAX], path[CTL_PATH_MAX];
    size_t len;
    napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len);
    int err = ctl_path(path, name);
    if (err) return throw_errno(env, err, "engine socket directory");
    int lock = ctl_lock(path);
    if (lock < 0) return throw_errno(env, errno == EWOULDBLOCK ? EADDRINUSE : errno, "lock");
    int c = ctl_connect(path);
    if (c >= 0 || errno == EAGAIN) { /* an engine answers: this namespace has one */
      if (c >= 0) close(c);
      close(lock);
      return throw_errno(env, EADDRINUSE, "bind");
    }
    fd = ctl_bind(path, SOCK_NONBLOCK);
    err = errno;
    close(lock);
    if (fd < 0) return throw_errno(env, err, "bind");
  }
  if (!rbuf && !(rbuf = malloc(CTL_MSG_MAX))) return throw_errno(env, ENOMEM, "ctlListen");
  ctl_env = env;
  napi_create_reference(env, argv[1], 1, &on_message);
  napi_create_reference(env, argv[2], 1, &on_close);
  napi_value resource, rname;
  napi_create_object(env, &resource);
  napi_create_string_utf8(env, "userland-proxy:control", NAPI_AUTO_LENGTH, &rname);
  napi_async_init(env, resource, rname, &async_ctx);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  if (uv_poll_init(loop, &listener, fd) != 0) {
    close(fd);
    return throw_errno(env, EINVAL, "uv_poll_init");
  }
  listener_fd = fd;
  uv_poll_start(&listener, UV_READABLE, on_accept);
  return NULL;
}

/* libuv's close callback of the listening socket's poll handle: the socket itself closes now. */
static void close_listener(uv_handle_t *h) { close(listener_fd = (int)(intptr_t)h->data); }

/* ctlStopListening(): closes the control socket (a new engine took the name); connections stay. */
static napi_value js_ctl_stop_listening(napi_env env, napi_callback_info info) {
  if (listener_fd >= 0) {
    listener.data = (void *)(intptr_t)listener_fd;
    listener_fd = -1;
    uv_close((uv_handle_t *)&listener, close_listener);
  }
  return NULL;
}

/* ctlSend(conn, msg, fd): sends one message with fd (-1: none); never blocks: what the peer does
 * not take now waits in the connection's queue (bounded). False when the connection is gone. */
static napi_value js_ctl_send(napi_env env, napi_callback_info info) {
  napi_value argv[3], result;
  if (get_args(env, info, 3, argv) < 0) return NULL;
  int conn, fd;
  void *data;
  size_t len;
  napi_get_value_int32(env, argv[0], &conn);
  napi_get_buffer_info(env, argv[1], &data, &len);
  napi_get_value_int32(env, argv[2], &fd);
  int ok = 0;
  ctl_conn_t *c = conn >= 0 && conn < nconns ? conns[conn] : NULL;
  if (c && !c->closing) {
    /* Never wait on the JS thread (every mapping's events and registrations run on it): a full
     * socket (a listing to a peer that reads slowly, or not at all) gets the rest as it reads. */
    if (!c->out && ctl_send(conn, data, len, fd, MSG_DONTWAIT) >= 0) {
      ok = 1;
    } else if ((c->out || errno == EAGAIN) && fd < 0 && c->queued + len <= CTL_QUEUE_MAX) {
      out_msg_t *m = malloc(sizeof *m + len);
      if (m) {
        m->next = NULL;
        m->len = len;
        memcpy(m->data, data, len);
        if (!c->out) c->out_tail = &c->out;
        *c->out_tail = m;
        c->out_tail = &m->next;
        c->queued += len;
        uv_poll_start(&c->poll, UV_READABLE | UV_WRITABLE | UV_DISCONNECT, on_conn);
        ok = 1;
      }
    }
  }
  napi_get_boolean(env, ok, &result);
  return result;
}

/* ctlClose(conn): closes a connection once its queue is flushed (at most a second of no progress),
 * reading nothing more from it. */
static napi_value js_ctl_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (get_args(env, info, 1, argv) < 0) return NULL;
  int conn;
  napi_get_value_int32(env, argv[0], &conn);
  ctl_conn_t *c = conn >= 0 && conn < nconns ? conns[conn] : NULL;
  if (c && c->out && !c->closing) {
    /* What is queued goes out first (the end of a listing), within the deadline. */
    uv_loop_t *loop;
    napi_get_uv_event_loop(env, &loop);
    c->closing = 1;
    c->deadline = uv_now(loop) + CTL_SEND_TIMEOUT_MS;
    if (!sweeping) {
      static int made;
      if (!made) {
        uv_timer_init(loop, &sweeper);
        uv_unref((uv_handle_t *)&sweeper);
        made = 1;
      }
      uv_timer_start(&sweeper, sweep, CTL_SEND_TIMEOUT_MS / 4, CTL_SEND_TIMEOUT_MS / 4);
      sweeping = 1;
    }
    return NULL;
  }
  drop_conn(conn);
  return NULL;
}

/* Reads an engine's answer on fd (closed after): the messages up to one that does not start with
 * 'J' (a part of a listing), as an array of Buffers; throws ETIMEDOUT after timeout ms from t0. */
static napi_value read_answer(napi_env env, int fd, int timeout, struct timespec t0) {
  napi_value out;
  napi_create_array(env, &out);
  char *buf = malloc(CTL_MSG_MAX);
  struct timespec t1;
  for (uint32_t i = 0; buf;) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int left = timeout - (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    struct pollfd p = { fd, POLLIN, 0 };
    if (left <= 0 || poll(&p, 1, left) <= 0) {
      free(buf);
      close(fd);
      return throw_errno(env, ETIMEDOUT, "no complete answer from the engine");
    }
    ssize_t n = recv(fd, buf, CTL_MSG_MAX, MSG_DONTWAIT);
    if (n <= 0) break;
    napi_value b;
    void *copy;
    napi_create_buffer_copy(env, (size_t)n, buf, &copy, &b);
    napi_set_element(env, out, i++, b);
    if (buf[0] != CTL_LISTING) break; /* J: a part of a listing; anything else ends the answer */
  }
  free(buf);
  close(fd);
  return out;
}

/* Connects to the engine at path as a client: only an engine of our own uid (SO_PEERCRED), and
 * a full backlog is retried until timeout ms from t0 instead of waited for in connect() (audit
 * N10: that wait ignored SIGTERM). The connection, or -1 with errno. */
static int connect_ours(const char *path, int timeout, struct timespec t0) {
  int fd;
  struct timespec t1;
  while ((fd = ctl_connect(path)) < 0 && errno == EAGAIN) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 >= timeout) break;
    usleep(1000);
  }
  if (fd < 0) return -1;
  if (ctl_peer_uid(fd) != (long)geteuid()) {
    close(fd);
    errno = EPERM;
    return -1;
  }
  return fd;
}

/* ctlRequest(name, msg, timeoutMs): one request to the engine at `name` (ls); see its contract at
 * the top of this file. */
static napi_value js_ctl_request(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (get_args(env, info, 3, argv) < 0) return NULL;
  char name[CTL_PATH_MAX];
  size_t len;
  void *data;
  int timeout;
  napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len);
  napi_get_buffer_info(env, argv[1], &data, &len);
  napi_get_value_int32(env, argv[2], &timeout);
  char path[CTL_PATH_MAX];
  int err = ctl_path(path, name);
  if (err) return throw_errno(env, err, "engine socket directory");
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int fd = connect_ours(path, timeout, t0);
  if (fd < 0) return throw_errno(env, errno, errno == EPERM ? "the engine socket is not held by our uid" : "connect");
  if (send(fd, data, len, MSG_NOSIGNAL) < 0) {
    err = errno;
    close(fd);
    return throw_errno(env, err, "send");
  }
  return read_answer(env, fd, timeout, t0);
}

/* ctlTakeOver(name, timeoutMs): a new engine takes the name from the running one (issue 18's
 * hand-over). Under the start-up lock: connect to the running engine, bind a socket beside the
 * name and rename() it over the name, so that from that instant every shim that connects reaches
 * us (the old engine keeps its nameless listener), then ask the old engine to move its mappings
 * (U): it tells each shim to re-register here and answers U<json>. Returns [our listening fd,
 * the answer as an array of Buffers (empty when no engine ran)]. */
static napi_value js_ctl_take_over(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (get_args(env, info, 2, argv) < 0) return NULL;
  char name[CTL_PATH_MAX], path[CTL_PATH_MAX], tmp[CTL_PATH_MAX + 24];
  size_t len;
  int timeout;
  napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len);
  napi_get_value_int32(env, argv[1], &timeout);
  int err = ctl_path(path, name);
  if (err) return throw_errno(env, err, "engine socket directory");
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int lock;
  while ((lock = ctl_lock(path)) < 0 && errno == EWOULDBLOCK) usleep(1000); /* a shim is starting one */
  if (lock < 0) return throw_errno(env, errno, "lock");
  int old = connect_ours(path, timeout, t0);
  snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
  int l = ctl_bind(tmp, SOCK_NONBLOCK);
  if (l < 0 || rename(tmp, path) < 0) {
    err = errno;
    if (l >= 0) close(l);
    unlink(tmp);
    if (old >= 0) close(old);
    close(lock);
    return throw_errno(env, err, "bind");
  }
  close(lock);
  napi_value result, lfd, answer;
  napi_create_array_with_length(env, 2, &result);
  napi_create_int32(env, l, &lfd);
  napi_set_element(env, result, 0, lfd);
  if (old >= 0 && send(old, (char[]){ CTL_UPGRADE }, 1, MSG_NOSIGNAL) == 1) {
    answer = read_answer(env, old, timeout, t0);
    if (!answer) { /* an old engine that does not hand over: no answer (thrown) */
      napi_value ex;
      napi_get_and_clear_last_exception(env, &ex);
      napi_create_array(env, &answer);
    }
  } else {
    if (old >= 0) close(old);
    napi_create_array(env, &answer);
  }
  napi_set_element(env, result, 1, answer);
  return result;
}

/* ctlPath(name): the socket path of engine `name` in this network namespace (ctl-msg.h). */
static napi_value js_ctl_path(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  if (get_args(env, info, 1, argv) < 0) return NULL;
  char name[CTL_PATH_MAX], path[CTL_PATH_MAX];
  size_t len;
  napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len);
  int err = ctl_path(path, name);
  if (err) return throw_errno(env, err, "engine socket directory");
  napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &result);
  return result;
}

/* The shim wire as ctl-msg.h declares it, for engine-protocol.ts to compare with its own table at
 * load: { protocol, messages: { register: "R", ... }, socketEnv, sharedEnv, namePrefix }. */
static napi_value make_ctl_contract(napi_env env) {
  static const struct {
    const char *name;
    char letter;
  } words[] = {
    { "register", CTL_REGISTER },
    { "adopt", CTL_ADOPT },
    { "stop", CTL_STOP },
    { "detach", CTL_DETACH },
    { "reopen", CTL_REOPEN },
    { "list", CTL_LIST },
    { "upgrade", CTL_UPGRADE },
    { "ready", CTL_READY },
    { "failed", CTL_FAILED },
    { "usage", CTL_USAGE },
    { "stopped", CTL_STOPPED },
    { "otherProtocol", CTL_OTHER_PROTOCOL },
    { "move", CTL_MOVE },
    { "listing", CTL_LISTING },
    { "listingEnd", CTL_LISTING_END },
  };
  napi_value c, messages, v;
  napi_create_object(env, &c);
  napi_create_object(env, &messages);
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
    napi_create_string_utf8(env, &words[i].letter, 1, &v);
    napi_set_named_property(env, messages, words[i].name, v);
  }
  napi_set_named_property(env, c, "messages", messages);
  napi_create_int32(env, CTL_PROTOCOL, &v);
  napi_set_named_property(env, c, "protocol", v);
  napi_create_string_utf8(env, CTL_ENV_SOCKET, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, c, "socketEnv", v);
  napi_create_string_utf8(env, CTL_ENV_SHARED, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, c, "sharedEnv", v);
  napi_create_string_utf8(env, CTL_NAME_PREFIX, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, c, "namePrefix", v);
  return c;
}

/* Adds the control functions and the wire's contract (ctlContract) to the addon's exports. */
void control_define(napi_env env, napi_value exports) {
  napi_set_named_property(env, exports, "ctlContract", make_ctl_contract(env));
  napi_property_descriptor props[] = {
    { "ctlListen", NULL, js_ctl_listen, NULL, NULL, NULL, napi_default, NULL },
    { "ctlSend", NULL, js_ctl_send, NULL, NULL, NULL, napi_default, NULL },
    { "ctlClose", NULL, js_ctl_close, NULL, NULL, NULL, napi_default, NULL },
    { "ctlStopListening", NULL, js_ctl_stop_listening, NULL, NULL, NULL, napi_default, NULL },
    { "ctlRequest", NULL, js_ctl_request, NULL, NULL, NULL, napi_default, NULL },
    { "ctlPath", NULL, js_ctl_path, NULL, NULL, NULL, napi_default, NULL },
    { "ctlTakeOver", NULL, js_ctl_take_over, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
