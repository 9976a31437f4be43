/*
 * Ending the TIME_WAIT of a target connection the proxy closed first (docs/forwarding.md,
 * "Connection churn"). The leg toward a target always runs from one host address to one target
 * address and port, so each of its TIME_WAIT entries holds one of the ~28 000 ephemeral ports for
 * 60 s: past ~470 connections/s closed by the client first, dials fail with EADDRNOTAVAIL
 * (moby#47537). Loopback's tcp_tw_reuse does not apply to container addresses.
 *
 * Why not an abortive close: the entry is made in softirq the moment the target's FIN reaches a
 * socket in FIN_WAIT_2 (tcp_fin -> tcp_time_wait), before we can read that FIN; a reset any
 * earlier could cut bytes the target still sends after our FIN (half-close). So we let the close
 * finish cleanly and then remove the entry with SOCK_DESTROY (sock_diag netlink, as `ss -K`),
 * naming it exactly: its 4-tuple and the socket cookie it inherited from our socket (read before
 * the entry existed: the cookie is made on first read), so no other connection can be hit. Only
 * an entry in TIME_WAIT is removed: by then our FIN was acknowledged (every byte we sent was
 * taken) and the target's FIN received (every byte it sent was read). What TIME_WAIT still
 * guarded: a retransmitted FIN (our last ACK lost) is answered by a reset instead of an ACK, after
 * the target's data was complete. Needs CAP_NET_ADMIN over the network namespace and a kernel
 * with CONFIG_INET_DIAG_DESTROY; without them nothing changes but the one warning.
 */
#include "engine.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/tcp.h>

/* Copies an address and port into one half of an inet_diag id. */
static void id_half(const struct sockaddr_storage *ss, __be16 *port, __be32 addr[4]) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    *port = a->sin_port;
    addr[0] = a->sin_addr.s_addr;
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    *port = a->sin6_port;
    memcpy(addr, &a->sin6_addr, 16);
  }
}

/* Names fd's connection for tw_end, while it is still connected: call it when our FIN goes out
 * first (the target's has not come). Its 4-tuple (a closed socket has no peer to ask for) and its
 * cookie, made by this first read so that the TIME_WAIT entry inherits it. 0 or -errno. */
int tw_mark(int fd, tw_id_t *t) {
  struct sockaddr_storage local, peer;
  socklen_t ll = sizeof local, pl = sizeof peer;
  uint64_t cookie = 0;
  socklen_t cl = sizeof cookie;
  if (getsockname(fd, (struct sockaddr *)&local, &ll) < 0 || getpeername(fd, (struct sockaddr *)&peer, &pl) < 0 ||
      getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &cl) < 0)
    return -errno;
  memset(t, 0, sizeof *t);
  t->family = (uint8_t)local.ss_family;
  id_half(&local, &t->id.idiag_sport, t->id.idiag_src);
  id_half(&peer, &t->id.idiag_dport, t->id.idiag_dst);
  t->id.idiag_cookie[0] = (uint32_t)cookie; /* sock_diag_check_cookie's order: low, high */
  t->id.idiag_cookie[1] = (uint32_t)(cookie >> 32);
  return 0;
}

/* Ends the TIME_WAIT entry of fd's connection, named by tw_mark; call it after the clean close's
 * last read and before close(fd). *nl is the caller's sock_diag socket (opened here on first use;
 * -1 before; one per thread). Returns 0 when the entry was removed, -ENOENT when there is none
 * to remove, or another -errno: -EPERM without CAP_NET_ADMIN, -EOPNOTSUPP without
 * CONFIG_INET_DIAG_DESTROY. */
int tw_end(int *nl, int fd, const tw_id_t *t) {
  /* Our side in TIME_WAIT leaves the socket itself CLOSED. CLOSING (a simultaneous close whose
   * FIN is not acknowledged yet) may still owe the target bytes: left alone. */
  struct tcp_info info;
  socklen_t il = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &il) < 0) return -errno;
  if (info.tcpi_state != TCP_CLOSE) return -ENOENT;
  if (*nl < 0) {
    *nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (*nl < 0) return -errno;
  }
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DESTROY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  req.r.sdiag_family = t->family;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = 1u << TCP_TIME_WAIT;
  req.r.id = t->id;
  struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
  if (sendto(*nl, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return -errno;
  /* The kernel answers in sendto's own context: the acknowledgement is queued already. */
  struct {
    struct nlmsghdr h;
    struct nlmsgerr e;
  } ack;
  ssize_t n = recv(*nl, &ack, sizeof ack, MSG_DONTWAIT);
  if (n < (ssize_t)sizeof ack.h || ack.h.nlmsg_type != NLMSG_ERROR) return n < 0 ? -errno : -EIO;
  return ack.e.error; /* 0 or -errno */
}
