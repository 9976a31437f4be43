/*
 * What both protocols check before they open anything for a client: the access lists (deny
 * first, then allow) and the process fd budget shared with JavaScript (fd-limit.ts).
 */
#include "engine.h"

/* The address bytes (4 or 16) and family of a socket address; returns its port. */
int addr_bytes(const struct sockaddr_storage *ss, uint8_t out[16], int *family) {
  if (ss->ss_family == AF_INET) {
    memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    *family = 4;
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  }
  memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
  *family = 6;
  return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* addr_bytes(), with an IPv4-mapped IPv6 address given as the IPv4 address it is (family 4):
 * how the access lists and the PROXY header see a client of a dual-stack socket. */
int addr_plain(const struct sockaddr_storage *ss, uint8_t out[16], int *family) {
  static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  int port = addr_bytes(ss, out, family);
  if (*family == 6 && memcmp(out, mapped, 12) == 0) {
    memmove(out, out + 12, 4);
    *family = 4;
  }
  return port;
}

/* True when the first `bits` bits of a and b agree. */
static int prefix_match(const uint8_t *a, const uint8_t *b, int bits) {
  int full = bits / 8, rest = bits % 8;
  if (memcmp(a, b, (size_t)full) != 0) return 0;
  if (rest == 0) return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

/* Families never mix (access-list.ts): an IPv4 or IPv4-mapped client (addr_plain) matches only
 * IPv4 rules (JS turned rules written as mapped IPv6 into IPv4 ones), a plain IPv6 client only
 * IPv6 rules. */
static int acl_hit(const acl_entry_t *list, int n, const uint8_t *addr, int family) {
  for (int i = 0; i < n; i++) {
    if (list[i].family == family && prefix_match(addr, list[i].addr, list[i].prefix)) return 1;
  }
  return 0;
}

/* The access lists' verdict on a client address: deny first, then allow (if any). */
int acl_allowed(group_t *g, const struct sockaddr_storage *ss) {
  if (g->nallow == 0 && g->ndeny == 0) return 1;
  uint8_t a[16];
  int fam;
  addr_plain(ss, a, &fam);
  if (acl_hit(g->deny, g->ndeny, a, fam)) return 0;
  return g->nallow == 0 || acl_hit(g->allow, g->nallow, a, fam);
}

/* n fds from the process budget (fd-limit.ts: cell 0 for the process, and the worker's own);
 * 0 (nothing taken) when that would pass the limit. */
int budget_take(group_t *g, int n) {
  if (!g->budget) return 1;
  if (__atomic_add_fetch(&g->budget[0], n, __ATOMIC_RELAXED) > g->budget_limit) {
    __atomic_sub_fetch(&g->budget[0], n, __ATOMIC_RELAXED);
    return 0;
  }
  if (g->budget_own > 0) __atomic_add_fetch(&g->budget[g->budget_own], n, __ATOMIC_RELAXED);
  return 1;
}

/* n fds back to the process budget. */
void budget_give(group_t *g, int n) {
  if (!g->budget) return;
  __atomic_sub_fetch(&g->budget[0], n, __ATOMIC_RELAXED);
  if (g->budget_own > 0) __atomic_sub_fetch(&g->budget[g->budget_own], n, __ATOMIC_RELAXED);
}

/* A pipe's 2 fds come from an allowance of their own (audit N8): a stalled connection's pipes never
 * take the fds of a connection the budget admits, so a connection costs its 2 sockets alone. The
 * last two cells: the allowance (written once by fd-limit.ts), then the pipe fds in use. */
int pipe_budget_take(group_t *g) {
  int32_t *used = &g->budget[g->budget_len - 1];
  if (__atomic_add_fetch(used, 2, __ATOMIC_RELAXED) > g->budget[g->budget_len - 2]) {
    __atomic_sub_fetch(used, 2, __ATOMIC_RELAXED);
    return 0;
  }
  return 1;
}
/* Whether a pipe could be had now (a hint: another thread may take it first). */
int pipe_budget_room(group_t *g) {
  return __atomic_load_n(&g->budget[g->budget_len - 1], __ATOMIC_RELAXED) + 2 <= g->budget[g->budget_len - 2];
}
void pipe_budget_give(group_t *g) { __atomic_sub_fetch(&g->budget[g->budget_len - 1], 2, __ATOMIC_RELAXED); }
