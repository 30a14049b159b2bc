/* Every map of a network, declared once. User space pins them under
 * <root>/<network-id[:12]>/<name> (and the ring buffer once, <root>/events)
 * and may resize them before loading (maps.py: SIZES). */
#ifndef SECNET_MAPS_H
#define SECNET_MAPS_H
#include "common.h"
#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
} state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);             /* one per version */
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);                 /* ifindex of the host-side veth */
	__type(value, struct endpoint);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr_key);
	__type(value, struct member);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pub_key);
	__type(value, struct pub_val);
} published SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);        /* both versions */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_val);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct restricted_key);
	__type(value, __u8);
} restricted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, struct cidr_val);
} cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fqdn_key);
	__type(value, struct fqdn_val);
} fqdn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct count_key);
	__type(value, struct count);
} allowed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct drop_key);
	__type(value, struct count);
} dropped SEC(".maps");

/* The flow table, in two LRU hashes of the same entries (lib/conntrack.h):
 * ct_new holds the flows not answered yet (what a first packet made),
 * conntrack the answered ones (ct_answers). A flood of flows nobody answers
 * (a port scan, a SYN flood) evicts only its own kind, never an established
 * flow (U21-F1). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
} ct_new SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ct_key);          /* the flow (sport 0) */
	__type(value, __u64);                /* ktime of its last report */
} reported SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct budget);
} logcap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct subnet_key);
	__type(value, __u8);
} subnets SEC(".maps");

/* frags: the first fragment of a datagram -> its ports (lib/frag.h) */
struct frag_key {
	__u8  saddr[16];
	__u8  daddr[16];
	__u32 id;                /* IPv4: the 16-bit identification; IPv6: the 32-bit one */
	__u8  proto;             /* IPv4: the protocol; IPv6: the fragment header's next header */
	__u8  family;
	__u16 pad;
};

struct frag_val {            /* what parse_l4 read from the first fragment */
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  l4;
	__u8  icmp_type;
	__u8  pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
} frags SEC(".maps");

/* per-CPU scratch space: a parsed packet and its flow's original direction
 * do not fit the 512-byte BPF stack beside everything else */
struct scratch {
	struct pkt p;
	struct pkt o;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

#endif
