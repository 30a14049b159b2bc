/* CPU ns per 64-byte UDP datagram sent to ARGV[1]:5203, ARGV[2] datagrams in sendmmsg batches of 64
   (CLOCK_PROCESS_CPUTIME_ID: with no CONFIG_IRQ_TIME_ACCOUNTING it holds the softirq work done
   in the sender's context: both veths and the bridge between). Built by bench/nft_guard.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0); long n = atol(argv[2]);
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons(5203)}; inet_pton(AF_INET, argv[1], &d.sin_addr);
    connect(s, (struct sockaddr *)&d, sizeof d);
    char buf[64] = {0}; struct iovec iov = {buf, 64}; struct mmsghdr m[64];
    memset(m, 0, sizeof m); for (int i = 0; i < 64; i++) { m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
    for (int i = 0; i < 100; i++) sendmmsg(s, m, 64, 0);
    double t0 = cpu(); long sent = 0;
    while (sent < n) { int r = sendmmsg(s, m, 64, 0); if (r > 0) sent += r; }
    printf("%.1f\n", (cpu() - t0) / sent);
    return 0;
}
