/*
 * The wire of the shim protocol, for both of its ends (native/shim.c, native/control.c): where
 * the engine's socket lives, how the one engine of a namespace gets started, and SOCK_SEQPACKET
 * messages that carry at most one file descriptor. Static inline: the shim is a separate
 * executable with nothing else in common.
 *
 * Where (audit N1): a path socket in a directory only our uid can write, never an abstract name,
 * which any local user could bind first and so decide whether root's proxies start:
 *   <dir>/<name>.<netns inode>.sock
 *   dir   /run/userland-proxy for root; $XDG_RUNTIME_DIR/userland-proxy, else
 *         /tmp/userland-proxy-<uid>, for anyone else, the root of a user namespace included
 *         (rootless Docker: RootlessKit's uid 0, whose XDG_RUNTIME_DIR dockerd-rootless sets).
 *         Made 0700 if missing; refused unless it is a real directory of ours, mode 0700.
 *   name  engine-<fnv1a32 of the install root> (src/shared-engine/engine-protocol.ts), or
 *         $USERLAND_PROXY_ENGINE_SOCKET; the network namespace's inode keeps one engine per
 *         namespace, as the kernel's scoping of abstract names did.
 * Start-up: whoever finds no engine (ECONNREFUSED, ENOENT) takes an flock on <path>.lock, looks
 * again, and only then replaces a stale socket file and binds: concurrent first shims make one
 * engine, and a live engine's file is never unlinked. An engine never unlinks its own file (a
 * successor may have taken the name meanwhile).
 */
#ifndef USERLAND_PROXY_CTL_MSG_H
#define USERLAND_PROXY_CTL_MSG_H
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_PATH_MAX 108 /* sizeof sun_path */

/* The shim protocol's version (audit N9), src/core/constants.ts CTL_PROTOCOL too. A shim's registration
 * ends with a field "protocol=<n>" (an engine of protocol 1 ignores it: it reads USERLAND_PROXY_*
 * entries only); the engine's "0" verdict carries "protocol=<n>" after the type byte (a shim of
 * protocol 1 reads the type byte only). An engine that cannot serve a shim's protocol answers
 * V<reason>, which a shim of protocol 2 or later acts on by serving its port alone (protocol 1
 * shims ignore unknown messages: they fall back too, once their verdict times out).
 *   1  the protocol without versions (before 0.2.0)
 *   2  versioned; M/D moves (userland-proxy upgrade), D detach on dockerd death */
#define CTL_PROTOCOL 2

/* The wire's words, declared here once for both C ends; control.c exports them (ctlContract) and
 * src/shared-engine/engine-protocol.ts compares them with its own table when the addon loads, as
 * binding.c's contract is compared: a letter changed on one side fails loudly, never silently.
 * shim -> engine: */
#define CTL_REGISTER 'R' /* <argc>\0<argv...>\0<USERLAND_PROXY_*=...>\0protocol=<n>\0 [+ fd 4] */
#define CTL_ADOPT 'A' /* the same, on the socket the shim holds (its engine died, or it moves) */
#define CTL_STOP 'S' /* dockerd stopped the proxy: close the mapping */
#define CTL_DETACH 'D' /* dockerd died, or the mapping moved: free the port, let connections drain */
#define CTL_REOPEN 'H' /* SIGHUP: reopen the mapping's log file */
#define CTL_LIST 'L' /* userland-proxy ls */
#define CTL_UPGRADE 'U' /* from a new engine: hand every mapping over (and its answer, U<json>) */
/* engine -> shim: */
#define CTL_READY '0' /* 0protocol=<n> [+ the listening socket] */
#define CTL_FAILED '1' /* 1<message>: exit 1 */
#define CTL_USAGE '2' /* 2<message>: a flag error, exit 2 */
#define CTL_STOPPED 'B' /* the answer to S and D */
#define CTL_OTHER_PROTOCOL 'V' /* V<reason>: serve the port alone */
#define CTL_MOVE 'M' /* a new engine took the name: register there, then D here */
#define CTL_LISTING 'J' /* J<part of the JSON listing>, then: */
#define CTL_LISTING_END 'E'
/* The environment both ends read, and the default engine name's prefix (engine-<fnv1a32>). */
#define CTL_ENV_SOCKET "USERLAND_PROXY_ENGINE_SOCKET"
#define CTL_ENV_SHARED "USERLAND_PROXY_SHARED"
#define CTL_NAME_PREFIX "engine-"

/* The uid of the process at the other end of a connected socket (SO_PEERCRED), or -1 when it
 * cannot be read. A client hands its sockets only to an engine of its own uid. */
static inline long ctl_peer_uid(int fd) {
  struct ucred cred = { 0, 0, 0 };
  socklen_t cl = sizeof cred;
  return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 ? (long)cred.uid : -1;
}

/* 1 when we are root of the initial user namespace. Inside another one (rootless Docker:
 * RootlessKit maps the user to uid 0 there) /run is the host's seen through RootlessKit's copy-up,
 * and /run/userland-proxy, if any, the host root's: such a root is a user like any other, and
 * keeps its engine under its XDG_RUNTIME_DIR. The initial namespace maps all of 0..2^32-2. */
static inline int ctl_host_root(void) {
  if (geteuid() != 0) return 0;
  char map[128];
  int fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1; /* no /proc: nothing says otherwise */
  ssize_t n = read(fd, map, sizeof map - 1);
  close(fd);
  if (n <= 0) return 1;
  map[n] = '\0';
  unsigned long inside, outside, count;
  return sscanf(map, "%lu %lu %lu", &inside, &outside, &count) == 3 && inside == 0 && outside == 0 &&
         count == 4294967295UL;
}

/* Fills path (CTL_PATH_MAX bytes) with the socket of engine `name` in this network namespace,
 * making the directory if missing. 0, or an errno: EPERM when the directory is not a private one
 * of ours (another user made it), ENAMETOOLONG, or what mkdir/stat said. */
static inline int ctl_path(char *path, const char *name) {
  char dir[CTL_PATH_MAX];
  const char *xdg = getenv("XDG_RUNTIME_DIR");
  int n;
  if (ctl_host_root())
    n = snprintf(dir, sizeof dir, "/run/userland-proxy");
  else if (xdg && xdg[0] == '/')
    n = snprintf(dir, sizeof dir, "%s/userland-proxy", xdg);
  else
    n = snprintf(dir, sizeof dir, "/tmp/userland-proxy-%u", (unsigned)geteuid());
  if (n < 0 || (size_t)n >= sizeof dir) return ENAMETOOLONG;
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) return errno;
  struct stat st;
  if (lstat(dir, &st) < 0) return errno;
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) return EPERM;
  struct stat ns;
  if (stat("/proc/self/ns/net", &ns) < 0) return errno;
  n = snprintf(path, CTL_PATH_MAX, "%s/%s.%lu.sock", dir, name, (unsigned long)ns.st_ino);
  return n < 0 || n >= CTL_PATH_MAX ? ENAMETOOLONG : 0;
}

/* The address of a path. */
static inline socklen_t ctl_addr(struct sockaddr_un *a, const char *path) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t n = strlen(path);
  if (n > sizeof a->sun_path - 1) n = sizeof a->sun_path - 1;
  memcpy(a->sun_path, path, n);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/* A non-blocking connect to the engine at path: the connection (still non-blocking), or -1 with
 * errno (ECONNREFUSED/ENOENT: no engine; EAGAIN: its backlog is full, it is busy). Never blocks:
 * a blocking connect to a full backlog waits for ever (audit N1). */
static inline int ctl_connect(const char *path) {
  struct sockaddr_un a;
  socklen_t len = ctl_addr(&a, path);
  int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (c < 0) return -1;
  if (connect(c, (struct sockaddr *)&a, len) == 0) return c;
  int err = errno;
  close(c);
  errno = err;
  return -1;
}

/* The start-up lock of path: its fd (flock held) or -1 (EWOULDBLOCK: another process is
 * starting an engine or checking for one). Closing the fd releases it. */
static inline int ctl_lock(const char *path) {
  char lock[CTL_PATH_MAX + 8];
  snprintf(lock, sizeof lock, "%s.lock", path);
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
  int err = errno;
  close(fd);
  errno = err;
  return -1;
}

/* Under the start-up lock, with no engine answering at path: replaces a stale socket file with a
 * bound, listening socket (the new engine's). Its fd, or -1 with errno. */
static inline int ctl_bind(const char *path, int flags) {
  struct sockaddr_un a;
  socklen_t len = ctl_addr(&a, path);
  unlink(path);
  int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | flags, 0);
  if (l < 0) return -1;
  if (bind(l, (struct sockaddr *)&a, len) < 0 || listen(l, SOMAXCONN) < 0) {
    int err = errno;
    close(l);
    errno = err;
    return -1;
  }
  return l;
}

/* One sendmsg of buf with `pass` (when >= 0) as SCM_RIGHTS; retried on EINTR. */
static inline ssize_t ctl_send(int fd, const void *buf, size_t len, int pass, int flags) {
  struct iovec iov = { (void *)buf, len };
  union {
    struct cmsghdr h;
    char space[CMSG_SPACE(sizeof(int))];
  } cbuf;
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (pass >= 0) {
    m.msg_control = cbuf.space;
    m.msg_controllen = sizeof cbuf.space;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &pass, sizeof pass);
  }
  ssize_t w;
  while ((w = sendmsg(fd, &m, flags | MSG_NOSIGNAL)) < 0 && errno == EINTR) {}
  return w;
}

/* One recvmsg into buf (close-on-exec descriptors, EINTR retried). *got receives the first
 * descriptor the message carried, or -1; any more are closed: one per message, never more. */
static inline ssize_t ctl_recv(int fd, void *buf, size_t cap, int *got, int flags) {
  union {
    struct cmsghdr h;
    char space[CMSG_SPACE(sizeof(int) * 4)];
  } cbuf;
  struct iovec iov = { buf, cap };
  struct msghdr m = {
    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.space, .msg_controllen = sizeof cbuf.space
  };
  ssize_t n;
  while ((n = recvmsg(fd, &m, flags | MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
  *got = -1;
  for (struct cmsghdr *h = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL; h; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    int nfd = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < nfd; i++) {
      int x;
      memcpy(&x, CMSG_DATA(h) + i * sizeof(int), sizeof x);
      if (*got < 0)
        *got = x;
      else
        close(x);
    }
  }
  /* A message cut to cap, or descriptors the kernel dropped, is not the message sent: refuse it
   * rather than parse a part (audit N12). Nobody of ours sends one that large. */
  if (n > 0 && (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    if (*got >= 0) close(*got);
    *got = -1;
    errno = EMSGSIZE;
    return -1;
  }
  return n;
}

#endif
