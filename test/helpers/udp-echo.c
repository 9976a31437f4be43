/* UDP echo server for the dockerd end-to-end test image: busybox has no UDP server applet.
 * Built statically by the test (gcc -static) so the image needs no libc. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(argc > 1 ? atoi(argv[1]) : 53);
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
  static char buf[65536];
  for (;;) {
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
  }
}
