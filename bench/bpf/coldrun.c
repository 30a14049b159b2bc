/* The cost of one run of a pinned tc program on one frame, cold and hot,
 * through BPF_PROG_TEST_RUN (Linux 4.12; the skb's device from the context's
 * ifindex: net/bpf/test_run.c, bpf_prog_test_run_skb).
 *
 *   coldrun PROG_PIN FRAME_HEX IFINDEX ROUNDS FLUSH_MIB SLEEP_US
 *
 * Cold: before each run, this process writes FLUSH_MIB MiB (a line every 64
 * bytes, a fresh page every 4 KiB), which evicts the program's text, its maps'
 * lines and their TLB entries from this CPU's caches (this VM: L2 1 MiB per
 * core, L3 32 MiB shared), then one run (repeat 1): the kernel's own duration
 * (ns, ktime around the run, bpf_test_timer). SLEEP_US > 0: sleep that long
 * before each cold run instead (what a ping's 10 ms spacing does: the vCPU
 * idles, the hypervisor runs others on its core; on this VM a far colder
 * start than any flush from user space). Hot: repeat 100000, the mean.
 * Prints "cold_median_ns hot_ns retval", or a one-line error on stderr. Run it
 * pinned to one CPU (taskset) in the namespace of IFINDEX (nsenter --net: ip netns
 * exec mounts a sysfs of its own, without bpffs).
 */
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int bpf(int cmd, union bpf_attr *a)
{
	return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static int cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int run(int fd, unsigned char *frame, int len, struct __sk_buff *ctx, int repeat,
	       uint32_t *duration, uint32_t *retval)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.test.prog_fd = fd;
	a.test.data_in = (uint64_t)(long)frame;
	a.test.data_size_in = len;
	a.test.ctx_in = (uint64_t)(long)ctx;
	a.test.ctx_size_in = sizeof(*ctx);
	a.test.repeat = repeat;
	if (bpf(BPF_PROG_TEST_RUN, &a))
		return -1;
	*duration = a.test.duration;
	*retval = a.test.retval;
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char frame[256];
	struct __sk_buff ctx;
	union bpf_attr a;
	uint32_t *cold, hot, retval;
	size_t flush;
	char *buf;
	int fd, len, rounds, i, sleep_us;

	if (argc != 7) {
		fprintf(stderr, "usage: coldrun PROG_PIN FRAME_HEX IFINDEX ROUNDS FLUSH_MIB SLEEP_US\n");
		return 2;
	}
	len = strlen(argv[2]) / 2;
	if (len < 14 || len > (int)sizeof(frame)) {
		fprintf(stderr, "coldrun: FRAME_HEX must be 14 to 256 bytes\n");
		return 2;
	}
	for (i = 0; i < len; i++)
		sscanf(argv[2] + 2 * i, "%2hhx", &frame[i]);
	memset(&a, 0, sizeof(a));
	a.pathname = (uint64_t)(long)argv[1];
	fd = bpf(BPF_OBJ_GET, &a);
	if (fd < 0) {
		perror("coldrun: BPF_OBJ_GET");
		return 1;
	}
	memset(&ctx, 0, sizeof(ctx));
	ctx.ifindex = atoi(argv[3]);
	rounds = atoi(argv[4]);
	flush = (size_t)atoi(argv[5]) << 20;
	sleep_us = atoi(argv[6]);
	buf = malloc(flush + 1);
	cold = calloc(rounds, sizeof(*cold));
	if (!buf || !cold || rounds < 1)
		return 2;
	for (i = 0; i < rounds; i++) {
		if (sleep_us > 0) {
			struct timespec ts = { sleep_us / 1000000, (sleep_us % 1000000) * 1000L };

			nanosleep(&ts, NULL);
		} else {
			for (size_t off = 0; off < flush; off += 64)
				buf[off] = (char)(i + off);
		}
		if (run(fd, frame, len, &ctx, 1, &cold[i], &retval)) {
			perror("coldrun: BPF_PROG_TEST_RUN");
			return 1;
		}
	}
	if (run(fd, frame, len, &ctx, 100000, &hot, &retval)) {
		perror("coldrun: BPF_PROG_TEST_RUN");
		return 1;
	}
	qsort(cold, rounds, sizeof(*cold), cmp);
	printf("%u %u %u\n", cold[rounds / 2], hot, retval);
	return 0;
}
