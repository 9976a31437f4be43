/*
 * Starts proxies the way dockerd does, without the cost of a Node parent's fork: for each port, a
 * pipe, posix_spawn (vfork-like, as Go's os/exec) with the write end as fd 3, and a wait for the
 * status bytes; all of them one after another. Then, when a line arrives on stdin, SIGINT and wait
 * for each, one after another (dockerd's stop). Built and driven by bench/ports.mjs.
 *
 * Usage: spawn-seq COUNT PORT0 PROGRAM ARG... ("{port}" in an ARG becomes PORT0 + i)
 * Output, one JSON object per line:
 *   {"i":N,"pid":P,"us":MICROSECONDS,"status":"0\n"}   per start (spawn to the status bytes)
 *   {"started_us":TOTAL}                               after the last start
 *   {"stopped_us":TOTAL}                               after the last exit (once stdin had a line)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: spawn-seq COUNT PORT0 PROGRAM ARG...\n");
    return 2;
  }
  int count = atoi(argv[1]), port0 = atoi(argv[2]);
  int nargs = argc - 3;
  pid_t *pids = calloc((size_t)count, sizeof *pids);
  char **args = calloc((size_t)nargs + 1, sizeof *args);
  char portbuf[16];
  long long t0 = now_us();
  for (int i = 0; i < count; i++) {
    snprintf(portbuf, sizeof portbuf, "%d", port0 + i);
    for (int k = 0; k < nargs; k++) args[k] = strcmp(argv[3 + k], "{port}") == 0 ? portbuf : argv[3 + k];
    /* Close-on-exec ends above fd 3 (so that dup2 onto 3 never hits one of them), as Go's. */
    int q[2], p[2];
    if (pipe2(q, O_CLOEXEC) < 0) return 1;
    p[0] = fcntl(q[0], F_DUPFD_CLOEXEC, 10);
    p[1] = fcntl(q[1], F_DUPFD_CLOEXEC, 10);
    close(q[0]);
    close(q[1]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 3);
    long long t = now_us();
    if (posix_spawn(&pids[i], args[0], &fa, NULL, args, environ) != 0) return 1;
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    char st[256];
    ssize_t n = read(p[0], st, sizeof st - 1); /* dockerd reads the status bytes once */
    long long us = now_us() - t;
    close(p[0]);
    if (n < 0) n = 0;
    st[n] = '\0';
    printf("{\"i\":%d,\"pid\":%d,\"us\":%lld,\"status\":\"%s\"}\n", i, (int)pids[i], us, strcmp(st, "0\n") == 0 ? "0\\n" : "error");
    fflush(stdout);
  }
  printf("{\"started_us\":%lld}\n", now_us() - t0);
  fflush(stdout);
  char line[16];
  if (!fgets(line, sizeof line, stdin)) line[0] = '\0';
  long long t1 = now_us();
  for (int i = 0; i < count; i++) {
    kill(pids[i], SIGINT);
    waitpid(pids[i], NULL, 0);
  }
  printf("{\"stopped_us\":%lld}\n", now_us() - t1);
  return 0;
}
