/*
 * The wire of the shim protocol, for both of its ends (native/shim.c, native/control.c): the
 * engine's abstract socket address, and SOCK_SEQPACKET messages that carry at most one file
 * descriptor. Static inline: the shim is a separate executable with nothing else in common.
 */
#ifndef USERLAND_PROXY_CTL_MSG_H
#define USERLAND_PROXY_CTL_MSG_H
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The abstract address of `name`: sun_path[0] = 0, no file, scoped to the network namespace. */
static inline socklen_t ctl_addr(struct sockaddr_un *a, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t n = strlen(name);
  if (n > sizeof a->sun_path - 1) n = sizeof a->sun_path - 1;
  memcpy(a->sun_path + 1, name, n);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
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
  for (struct cmsghdr *h = n > 0 ? CMSG_FIRSTHDR(&m) : NULL; h; h = CMSG_NXTHDR(&m, h)) {
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
  return n;
}

#endif
