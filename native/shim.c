/*
 * userland-proxy-shim: docker mode's per-port process when the shared engine is built (issue 13).
 * bin/userland-proxy execs it for docker-proxy's flags; it costs about a millisecond and 0.1 MiB,
 * where a Node process per port costs 30+ ms and 6+ MiB. The mapping itself is served by one
 * engine per network namespace (src/shared-engine/engine.ts), which this shim starts on demand.
 *
 * Process contract: docker-proxy's, every byte as docker-mode.ts states it:
 *   argv   -proto -host-ip -host-port -container-ip -container-port [-use-listen-fd], one or two
 *          dashes, "-f v" or "-f=v". Anything else (-h, -v, -engine, an unknown flag) and
 *          USERLAND_PROXY_SHARED=off: exec the per-port Node proxy, which answers it.
 *   fd 3   "0\n" in one write once the engine accepts on the port, or "1\n<message>" and exit 1
 *          (2 for a flag syntax error); the message is the engine's docker-mode wording.
 *   fd 4   with -use-listen-fd: handed to the engine.
 *   SIGINT, SIGTERM  the engine closes the mapping (listener, connections, flows) and acks; exit 0
 *          within SHIM_STOP_WAIT_MS whatever the engine does (dockerd waits forever). When
 *          dockerd died (its Pdeathsig: a SIGTERM from our parent, or our parent is gone; a
 *          restart or live-restore follows), the engine frees the port but lets established
 *          TCP connections drain.
 *   SIGHUP the engine reopens the mapping's log file.
 *
 * Engine protocol (src/shared-engine/engine-protocol.ts is the other side): one AF_UNIX SOCK_SEQPACKET connection
 * per mapping to the engine's socket, a path in a directory only our uid can write, one per
 * network namespace (ctl-msg.h says where). Messages, first byte a type:
 *   shim -> engine  R<argc>\0<argv...>\0<USERLAND_PROXY_* env...>\0  [+ fd 4]  register
 *                   A<same>  [+ the held socket]                             re-register (adopt)
 *                   S  stop      D  detach (our dockerd died)      H  reopen the log
 *   engine -> shim  0[protocol=<n>] [+ the listening socket]   1<message>   2<message>   B (stopped)
 *                   V<reason>  this engine cannot serve this shim's protocol: serve the port alone
 *                   M  move: a new engine took the name (upgrade); register there, then D here
 * A registration ends with protocol=<n> (ctl-msg.h CTL_PROTOCOL says what each version means).
 * The shim keeps the listening socket the engine returns, so that no engine death ever unbinds a
 * port: on EOF it re-registers with a new engine, or execs the per-port proxy on that socket.
 * Whoever finds no engine takes the start-up lock, binds the socket and starts the engine (double
 * fork, own process group: it is nobody's child and carries no Pdeathsig) on it: concurrent first
 * shims make one engine. A stop signal ends the shim (exit 0) at any moment of all this.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl-msg.h"

/* Tunables (src/core/constants.ts documents the same values). */
#define STATUS_FD 3
#define LISTEN_FD 4
#define ENGINE_CONTROL_FD 3 /* the engine's inherited listening control socket */
#define ENGINE_NOFILE_FLOOR 1024 /* the least RLIMIT_NOFILE hard limit that starts an engine */
#define NODE_NOFILE_MIN 40 /* below it Node cannot start, and a proxy could not hold its listener */
#define MSG_MAX 65536
#define READY_DEADLINE_MS 5000 /* then the per-port proxy has 11 s left of dockerd's 16 s */
#define READOPT_DEADLINE_MS 1000 /* a lost engine: reach a new one within 1 s, or run per-port */
/* ...and once a new engine has our re-registration, wait this long for its verdict: no dockerd
 * waits meanwhile, the port stays bound (clients queue in its backlog), and a new engine taking
 * back 1000 mappings needs seconds; a Node process per port for every shim that gave up after 1 s
 * cost gigabytes (audit N5). */
#define READOPT_VERDICT_MS 30000
#define SHIM_STOP_WAIT_MS 5000
#define PARENT_DEATH_POLLS 20 /* x 10 ms: a SIGTERM from our parent, is it dying (Pdeathsig)? */
#define ENGINE_SPAWNS 2 /* engines started for one registration before falling back */

extern char **environ;
static char root[PATH_MAX];
static char launcher[PATH_MAX + 32];
static char path[CTL_PATH_MAX];
static char **args;
static int nargs;

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static void write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

/* True when fd 3 is a pipe, file, tty or socket a parent gave us (status-pipe.ts's rule). */
static int status_open(void) {
  struct stat st;
  if (fstat(STATUS_FD, &st) < 0) return 0;
  return S_ISFIFO(st.st_mode) || S_ISREG(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode);
}

static void report(const char *text, size_t n) {
  if (!status_open()) return;
  write_all(STATUS_FD, text, n); /* "0\n" is 2 bytes: one write, as dockerd reads it */
  close(STATUS_FD);
}

/* Start failure: one line on stderr, "1\n<message>" on fd 3, exit code. */
static void fail(int code, const char *msg, const char *hint) {
  char line[MSG_MAX + 64];
  int n = snprintf(line, sizeof line, "userland-proxy: %s%s\n", msg, hint);
  write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  n = snprintf(line, sizeof line, "1\n%s", msg);
  report(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  exit(code);
}

/* USERLAND_PROXY_SHARED unset, empty or true (the values settings.ts reads as true). */
static int shared_on(void) {
  const char *v = getenv(CTL_ENV_SHARED);
  return !v || !*v || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1");
}

/* Execs today's per-port Node proxy with our argv (plus -use-listen-fd on `held`, once fd 3 has
 * been answered). Signals are unblocked first: the mask survives execve. */
static void exec_node(int held) {
  const char *path = launcher;
  /* Node itself dies below a few dozen fds (a SIGSEGV at 16, an EMFILE stack trace at 24: audit
   * N12), before it could answer on fd 3: say why here, in docker mode's words. */
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_max != RLIM_INFINITY && r.rlim_max < NODE_NOFILE_MIN) {
    char msg[120];
    snprintf(msg, sizeof msg, "RLIMIT_NOFILE is %lu: userland-proxy needs at least %d file descriptors",
        (unsigned long)r.rlim_max, NODE_NOFILE_MIN);
    fail(1, msg, "");
  }
  char **argv = calloc((size_t)nargs + 2, sizeof *argv);
  if (!argv) fail(1, "out of memory", "");
  int n = 0;
  int flagged = 0;
  for (int i = 0; i < nargs; i++) {
    argv[n++] = args[i];
    if (strcmp(args[i], "-use-listen-fd") == 0 || strcmp(args[i], "--use-listen-fd") == 0) flagged = 1;
  }
  if (held >= 0) {
    if (held != LISTEN_FD && dup2(held, LISTEN_FD) < 0) fail(1, "cannot move the listening socket to fd 4", "");
    if (!flagged) argv[n++] = "-use-listen-fd";
  }
  argv[n] = NULL;
  /* Keep the launcher from sending us back here; an invalid value stays for Node to report. */
  if (shared_on()) setenv(CTL_ENV_SHARED, "false", 1);
  /* Signals that arrived while blocked would act at the unmask, before Node can handle them: a
   * stop means exit 0 now (docker mode's rule), a SIGHUP (reopen the log) has nothing to do yet. */
  sigset_t set, none;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  struct timespec zero = { 0, 0 };
  for (int sig; (sig = sigtimedwait(&set, NULL, &zero)) > 0;)
    if (sig != SIGHUP) exit(0);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execv(path, argv);
  char msg[PATH_MAX + 64];
  snprintf(msg, sizeof msg, "cannot run %s: %s", path, strerror(errno));
  fail(1, msg, "");
}

/* 1 when every argument is one of the flags dockerd passes; sets *listen_flag for -use-listen-fd. */
static int understood(int *listen_flag) {
  static const char *const flags[] = { "proto", "host-ip", "host-port", "container-ip", "container-port" };
  for (int i = 1; i < nargs; i++) {
    const char *a = args[i];
    if (a[0] != '-') return 0;
    a += a[1] == '-' ? 2 : 1;
    size_t n = strcspn(a, "=");
    if (n == strlen("use-listen-fd") && strncmp(a, "use-listen-fd", n) == 0 && a[n] == '\0') {
      *listen_flag = 1;
      continue;
    }
    int known = 0;
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++)
      if (strlen(flags[k]) == n && strncmp(a, flags[k], n) == 0) known = 1;
    if (!known) return 0;
    if (a[n] != '=') i++; /* the value is the next argument */
  }
  return 1;
}

/* Cuts the last path component off dir; 0 if there is none. */
static int up(char *dir) {
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return 0;
  *slash = '\0';
  return 1;
}

/* The install root and the Node launcher. This binary is <root>/build/Release/userland-proxy-shim
 * in a checkout (bin/userland-proxy, the launcher, execs it), or <root>/bin/userland-proxy where
 * deploy/docker/install.sh put it, so that dockerd execs it directly (saving the shell's ~1 ms
 * per port) and the launcher is bin/userland-proxy-node. */
static void find_root(void) {
  ssize_t n = readlink("/proc/self/exe", root, sizeof root - 1);
  if (n <= 0) fail(1, "cannot read /proc/self/exe", "");
  root[n] = '\0';
  if (!up(root)) fail(1, "cannot find the install directory of userland-proxy-shim", "");
  size_t len = strlen(root);
  int checkout = len >= 14 && strcmp(root + len - 14, "/build/Release") == 0;
  if (!up(root) || (checkout && !up(root))) fail(1, "cannot find the install directory of userland-proxy-shim", "");
  snprintf(launcher, sizeof launcher, "%s/bin/userland-proxy%s", root, checkout ? "" : "-node");
}

/* The engine's socket (ctl-msg.h; src/shared-engine/engine-protocol.ts names it the same way). 0, or an errno
 * when there is no private directory for it (the per-port proxy then serves). */
static int engine_path(void) {
  const char *given = getenv(CTL_ENV_SOCKET);
  char name[64];
  if (given && *given) {
    snprintf(name, sizeof name, "%s", given);
  } else {
    uint32_t h = 2166136261u; /* FNV-1a: installs in different directories get different engines */
    for (const char *p = root; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(name, sizeof name, CTL_NAME_PREFIX "%08x", h);
  }
  return ctl_path(path, name);
}

/* Starts the engine on the bound, listening control socket `l`: a double fork, so that the
 * engine outlives us, gets no Pdeathsig and is not in our process group. */
static void spawn_engine(int l) {
  pid_t pid = fork();
  if (pid < 0) return;
  if (pid > 0) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return;
  }
  /* A process group of its own: a Ctrl-C or kill aimed at the group of whoever started the first
   * shim (a terminal, dockerd in the foreground) must not take every mapping down. Not a session
   * of its own: with CFS autogroups that would give the engine its own share of the CPUs, unlike a
   * docker-proxy, which runs in dockerd's (measured: a proxy in a session of its own on 2 busy
   * CPUs left the load generator 10-20 % fewer datagrams per second). */
  setpgid(0, 0);
  if (fork() != 0) _exit(0);
  int hl = fcntl(l, F_DUPFD, 10);
  int null = open("/dev/null", O_RDWR);
  if (hl < 0 || null < 0) _exit(127);
  dup2(null, 0);
  dup2(null, 1);
  dup2(null, 2);
  dup2(hl, ENGINE_CONTROL_FD); /* dup2 clears FD_CLOEXEC on the copy */
  /* Nothing else of ours reaches the engine: not another shim's fd 4, at any fd number. */
  if (close_range(ENGINE_CONTROL_FD + 1, ~0U, 0) < 0)
    for (int fd = ENGINE_CONTROL_FD + 1; fd < 65536; fd++) close(fd);
  /* One fd budget for every mapping: as many as the hard limit allows (shared-engine rule 7). */
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
  if (chdir("/") < 0) _exit(127);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  char *argv[] = { "userland-proxy", "engine", "--control-fd=3", NULL };
  execv(launcher, argv);
  _exit(127);
}

/* Connects to this namespace's engine, starting one when none answers. Returns the connection
 * (blocking again), or -1 when no engine of ours can be reached before `deadline`. A stop signal
 * meanwhile ends the shim (exit 0), however long the engine takes. */
/* Reads pending signals: returns SIGINT/SIGTERM when asked to stop, after sending H for SIGHUP. */
static pid_t stop_sender; /* who sent the last stop signal (ssi_pid) */
static int take_signals(int sigfd, int c) {
  struct signalfd_siginfo si;
  int stop = 0;
  while (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGHUP) {
      if (c >= 0) send(c, (char[]){ CTL_REOPEN }, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      stop = (int)si.ssi_signo;
      stop_sender = (pid_t)si.ssi_pid;
    }
  }
  return stop;
}

/* Whether our RLIMIT_NOFILE hard limit may size the engine's one fd budget for every mapping of
 * the namespace (audit N7: a wrapper's `ulimit -Hn 256` capped every later port); below the floor
 * we start no engine and serve our port alone (joining a running engine is fine). */
static int nofile_enough(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_max == RLIM_INFINITY || r.rlim_max >= ENGINE_NOFILE_FLOOR) return 1;
  char line[160];
  int n = snprintf(line, sizeof line,
      "userland-proxy: RLIMIT_NOFILE hard limit %lu is below %d, too low to start the shared engine: serving this port "
      "alone\n",
      (unsigned long)r.rlim_max, ENGINE_NOFILE_FLOOR);
  write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  return 0;
}

static int connect_engine(long deadline, int *spawned, int sigfd) {
  for (;;) {
    if (take_signals(sigfd, -1)) exit(0); /* a stop while we look for an engine */
    int c = ctl_connect(path);
    if (c >= 0) {
      /* Only an engine of our own uid gets our sockets (the directory is ours: say so loudly if
       * anyone else answers). */
      long uid = ctl_peer_uid(c);
      if (uid == (long)geteuid()) {
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
        return c;
      }
      char line[CTL_PATH_MAX + 128];
      int n = snprintf(
          line, sizeof line, "userland-proxy: %s is held by uid %ld, not ours: serving this port alone\n", path, uid);
      write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
      close(c);
      return -1;
    }
    int err = errno;
    if (now_ms() > deadline) return -1;
    if (err == ECONNREFUSED || err == ENOENT) {
      int lock = ctl_lock(path);
      if (lock >= 0) {
        /* Ours to start, unless someone started one between our connect and the lock. */
        c = ctl_connect(path);
        if (c >= 0) {
          close(c);
        } else if (*spawned >= ENGINE_SPAWNS || !nofile_enough()) {
          close(lock);
          return -1;
        } else {
          int l = ctl_bind(path, 0);
          if (l < 0) { /* cannot bind: no engine to wait for */
            close(lock);
            return -1;
          }
          (*spawned)++;
          spawn_engine(l);
          close(l);
        }
        close(lock);
        continue;
      }
      if (errno != EWOULDBLOCK) return -1;
    } else if (err != EAGAIN && err != EINTR) {
      return -1;
    }
    usleep(1000); /* someone else is starting the engine, or its backlog is full: it is busy */
  }
}

/* Sends a registration: argv and our USERLAND_PROXY_* environment, with `fd` when >= 0. Returns
 * 0, -1 if the send failed, -2 if it does not fit one message. */
static int send_register(int c, char type, int fd) {
  static char buf[MSG_MAX];
  size_t n = 0;
  buf[n++] = type;
  n += (size_t)snprintf(buf + n, sizeof buf - n, "%d", nargs - 1) + 1;
  for (int i = 1; i < nargs; i++) {
    size_t l = strlen(args[i]) + 1;
    if (n + l > sizeof buf) return -2;
    memcpy(buf + n, args[i], l);
    n += l;
  }
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "USERLAND_PROXY_", 15) != 0) continue;
    size_t l = strlen(*e) + 1;
    if (n + l > sizeof buf) return -2;
    memcpy(buf + n, *e, l);
    n += l;
  }
  char proto[24];
  size_t l = (size_t)snprintf(proto, sizeof proto, "protocol=%d", CTL_PROTOCOL) + 1;
  if (n + l > sizeof buf) return -2;
  memcpy(buf + n, proto, l);
  n += l;
  return ctl_send(c, buf, n, fd, 0) < 0 ? -1 : 0;
}

/* Receives one message into msg (NUL-terminated) and its fd, if any, into *fd. Returns the length,
 * 0 when the engine is gone (EOF or error). */
static ssize_t recv_msg(int c, char *msg, size_t cap, int *fd) {
  int got;
  ssize_t n = ctl_recv(c, msg, cap - 1, &got, 0);
  if (got >= 0 && *fd < 0)
    *fd = got;
  else if (got >= 0)
    close(got);
  if (n <= 0) return 0;
  msg[n] = '\0';
  return n;
}

/* Waits for the engine's verdict on a registration. Returns its type ('0', '1', '2', 'V'), 0 when the
 * engine went away, -1 at the deadline. A stop signal meanwhile: exit 0 (docker mode's rule: a
 * SIGINT at any moment ends us cleanly; our closing connection closes the mapping). */
static int await_verdict(int c, int sigfd, long deadline, char *msg, size_t cap, int *fd) {
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) return -1;
    struct pollfd p[2] = { { c, POLLIN, 0 }, { sigfd, POLLIN, 0 } };
    if (poll(p, 2, (int)left) < 0 && errno != EINTR) return 0;
    if (p[1].revents && take_signals(sigfd, -1)) exit(0);
    if (!p[0].revents) continue;
    *fd = -1;
    if (recv_msg(c, msg, cap, fd) == 0) return 0;
    if (msg[0] == CTL_READY || msg[0] == CTL_FAILED || msg[0] == CTL_USAGE || msg[0] == CTL_OTHER_PROTOCOL)
      return msg[0];
    if (*fd >= 0) close(*fd);
  }
}

/* Registers (again) with an engine, starting one if needed. Returns the connection with the
 * verdict in *type, or -1 when no engine could be reached before the deadline. */
static int register_mapping(
    char kind, int fd, int sigfd, long deadline, long verdict_ms, char *msg, size_t cap, int *type, int *got) {
  int spawned = 0;
  for (;;) {
    int c = connect_engine(deadline, &spawned, sigfd);
    if (c < 0) return -1;
    long verdict = now_ms() + verdict_ms > deadline ? now_ms() + verdict_ms : deadline;
    int sent = send_register(c, kind, fd);
    if (sent < 0) {
      close(c);
      if (sent == -2 || now_ms() > deadline) return -1; /* too long for one message: per-port */
      continue; /* the engine closed on us (exiting idle): try again */
    }
    *got = -1;
    *type = await_verdict(c, sigfd, verdict, msg, cap, got);
    if (*type > 0) return c;
    close(c);
    if (*type < 0) return -1;
    /* The engine went away before answering (it was exiting idle, or died): try a new one. */
  }
}

int main(int argc, char **argv) {
  args = argv;
  nargs = argc;
  find_root();
  int listen_flag = 0;
  pid_t parent = getppid(); /* dockerd; a signal that finds another parent is its Pdeathsig */
  if (!shared_on() || !understood(&listen_flag)) exec_node(-1);
  int err = engine_path();
  if (err) {
    char line[200];
    int n = snprintf(line, sizeof line,
        "userland-proxy: no private directory for the shared engine's socket (%s): serving this port alone\n",
        strerror(err));
    write_all(2, line, (size_t)n);
    exec_node(-1);
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  int sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) exec_node(-1);

  static char msg[MSG_MAX];
  int in_fd = listen_flag && fcntl(LISTEN_FD, F_GETFD) >= 0 ? LISTEN_FD : -1;
  int type = 0;
  int held = -1;
  int c = register_mapping(CTL_REGISTER, in_fd, sigfd, now_ms() + READY_DEADLINE_MS, 0, msg, sizeof msg, &type, &held);
  if (c >= 0 && type == CTL_OTHER_PROTOCOL) { /* an engine of another protocol (CTL_PROTOCOL): serve alone */
    char line[256];
    int n = snprintf(line, sizeof line,
        "userland-proxy: the shared engine cannot serve this shim (%s): serving this port alone\n", msg + 1);
    write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    close(c);
    if (held >= 0) close(held);
    c = -1;
  }
  if (c < 0) {
    close(sigfd);
    exec_node(-1); /* no engine (not built right, refused, or not starting): the per-port proxy */
  }
  if (type != CTL_READY) fail(type - CTL_READY, msg + 1, type == CTL_USAGE ? " (run with -h for usage)" : "");
  if (held < 0) fail(1, "the shared engine returned no listening socket", "");
  if (in_fd >= 0) close(in_fd);
  report("0\n", 2);

  for (;;) {
    struct pollfd p[2] = { { c, POLLIN, 0 }, { sigfd, POLLIN, 0 } };
    if (poll(p, 2, -1) < 0) continue;
    if (p[1].revents) {
      int sig = take_signals(sigfd, c);
      if (sig) {
        /* Stop: the engine closes the mapping and says B; never wait longer than the bound. If
         * dockerd died, detach: the port is freed, connections drain. dockerd stops a proxy with
         * SIGINT; its death reaches us as Pdeathsig SIGTERM, sent by the kernel in dockerd's name
         * (ssi_pid) as soon as the thread that forked us exits, while our parent may still be a
         * dying dockerd's other thread: then we are reparented within moments. A SIGTERM from a
         * parent that lives on (an operator's, a test's) is a stop. */
        int died = getppid() != parent;
        for (int i = 0; i < PARENT_DEATH_POLLS && !died && sig == SIGTERM && stop_sender == parent; i++) {
          usleep(10000);
          died = getppid() != parent;
        }
        send(c, (char[]){ died ? CTL_DETACH : CTL_STOP }, 1, MSG_NOSIGNAL);
        long deadline = now_ms() + SHIM_STOP_WAIT_MS;
        for (long left; (left = deadline - now_ms()) > 0;) {
          struct pollfd q = { c, POLLIN, 0 };
          if (poll(&q, 1, (int)left) <= 0) continue;
          int fd = -1;
          if (recv_msg(c, msg, sizeof msg, &fd) == 0 || msg[0] == CTL_STOPPED) break;
          if (fd >= 0) close(fd);
        }
        return 0;
      }
    }
    if (!p[0].revents) continue;
    int fd = -1;
    if (recv_msg(c, msg, sizeof msg, &fd) > 0) {
      if (fd >= 0) close(fd);
      if (msg[0] != CTL_MOVE) continue;
      /* Move (userland-proxy upgrade): register with the engine now at the name, on the socket we
       * hold; once it accepts there, detach from the old one, which drains its connections. If
       * the new engine refuses, we stay where we are. */
      int got = -1, moved = 0;
      int n = register_mapping(
          CTL_ADOPT, held, sigfd, now_ms() + READOPT_DEADLINE_MS, READOPT_VERDICT_MS, msg, sizeof msg, &moved, &got);
      if (got >= 0) close(got);
      if (n >= 0 && moved == CTL_READY) {
        send(c, (char[]){ CTL_DETACH }, 1, MSG_NOSIGNAL);
        close(c);
        c = n;
      } else if (n >= 0) {
        close(n);
      }
      continue;
    }
    /* The engine died: the port stays bound (we hold it). Register it with a new engine, or serve
     * it with the per-port proxy; connections it held are lost, queued ones are not. */
    close(c);
    int again = -1;
    c = register_mapping(
        CTL_ADOPT, held, sigfd, now_ms() + READOPT_DEADLINE_MS, READOPT_VERDICT_MS, msg, sizeof msg, &type, &again);
    if (again >= 0) close(again);
    if (c < 0 || type != CTL_READY) {
      char line[256];
      int n =
          snprintf(line, sizeof line, "userland-proxy: no shared engine took the port back (%s): serving it alone\n",
              c < 0 ? "none reachable in time" : msg + 1);
      write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
      close(sigfd);
      if (status_open()) close(STATUS_FD);
      exec_node(held);
    }
  }
}
