/* secnet eBPF datapath: the layouts shared with user space (maps.py packs them).
 *
 * Every struct here is a map key or value; maps.py mirrors each with a
 * struct.Struct format of the same size. Addresses are 16 bytes, IPv4 in
 * the first 4 (network order), the rest zero. Identities are the 16-bit
 * segment identities of segmentation/identities.py.
 */
#ifndef SECNET_COMMON_H
#define SECNET_COMMON_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ID_OUTSIDE      1
#define ID_HOST         2
#define ID_PENDING      3
#define ID_QUARANTINED  4

/* drop reasons: indexes into plugin.enforce.backend.REASONS */
enum reason {
	R_NO_RULE = 0, R_EGRESS, R_INTERNAL, R_NOT_MEMBER, R_INVALID,
	R_QUARANTINED, R_PENDING, R_SPOOFED, R_ETHERTYPE,
	R_LOOPBACK,     /* to the host's 127.0.0.0/8 (or ::1) from a container */
	R_ROUTER,       /* a container's router advertisement or redirect */
};
/* not a drop: judge() allowed the flow by an address a DNS answer taught (CT_FQDN) */
#define R_LEARNED 200

/* L4 codes of the policy map: the rule's protocol, family-neutral */
#define L4_ICMP_ECHO  1     /* ICMP echo request, or ICMPv6 echo request */
#define L4_TCP        6
#define L4_UDP        17
#define L4_OTHER_ICMP 255   /* any other ICMP type: only an "any" entry allows it */

#define MODE_ENFORCE 0
#define MODE_AUDIT   1

#define PASSED_MARK 0x00200000   /* DOCKER-USER accepts what secnet passed (plugin/enforce/hostfw/dockerfw.py) */
/* a new flow admitted by a learned DNS address: the NAT-only nft table copies it
 * into the connection's ct mark, so that conntrack pruning keeps the flow
 * (plugin/kernel/marks.py LEARNED_FLOW_MARK) */
#define LEARNED_MARK 0x00800000
/* a member's broadcast or multicast whose copy to the host egress denies (counted and
 * reported at the sender): the NAT-only nft table's input chain drops that copy
 * (plugin/enforce/nftables/natonly.py HOST_DENIED_MARK); the bridge's copies for
 * members are judged at their ports (group_copy) */
#define HOST_DENIED_MARK 0x01000000

/* endpoints: host-side veth ifindex -> the endpoint behind it */
struct endpoint {
	__u8  ipv6[16];        /* all zero: none */
	__u8  ll6[16];         /* the EUI-64 link-local address of mac */
	__u8  ipv4[4];         /* all zero: none */
	__u8  mac[6];
	__u16 identity;        /* segment identity, or ID_PENDING / ID_QUARANTINED */
	__u32 pad;
};

/* members: address -> identity (and the veth behind it, for the fast path) */
struct addr_key {
	__u8  family;          /* 4 or 6 */
	__u8  pad[3];
	__u8  addr[16];
};

struct member {
	__u16 identity;
	__u16 pad;
	__u32 ifindex;         /* host-side veth */
};

/* state[0]: which version of the versioned maps is in force, and the
 * generation: bumped by every change, so that flows judged before it are
 * judged again on their next packet. */
struct state {
	__u32 version;         /* 0 or 1 */
	__u32 generation;
	__u64 tag;             /* network id[:12] as a number (events carry it) */
};

/* settings[version] */
struct settings {
	__u8  mode;            /* MODE_ENFORCE, MODE_AUDIT */
	__u8  egress_allow;    /* 1: outside destinations no CIDR entry names are allowed */
	__u8  internal;        /* 1: nothing leaves or enters the network */
	__u8  strict_tcp;      /* 1: the host's nf_conntrack_tcp_loose is 0 (ct_opens) */
};

/* policy: LPM trie of east-west allowances.
 * data = version, src identity (be16), dst identity (be16), l4 code, port (be16):
 * "any" is a 40-bit prefix, a protocol with every port 48, a port range is
 * split into prefixes of the port. */
#define POLICY_DATA 8
struct policy_key {
	__u32 prefixlen;
	__u8  data[POLICY_DATA];
};

struct policy_val {          /* the PolicyEntry key this prefix came from (counters) */
	__u16 lo;
	__u16 hi;
	__u8  proto;             /* L4 code, 0 = any */
	__u8  pad[3];
};

/* restricted: (version, identity) of segments that some CIDR-source rule names */
struct restricted_key {
	__u8  version;
	__u8  pad;
	__u16 identity;
};

/* cidrs: LPM trie; data = version, direction, identity (be16), family, address.
 * The value of a prefix lists the services of every CIDR entry that contains
 * it (maps.py flattens nested CIDRs), so the longest match is enough. */
#define CIDR_DATA 24
#define CIDR_FIXED_BITS 40
#define CIDR_SLOTS 16
#define DIR_INGRESS 0
#define DIR_EGRESS  1
#define DIR_FQDN    2   /* any address, per segment: the services of its dns(...) rules (CT_FQDN) */
struct cidr_key {
	__u32 prefixlen;
	__u8  data[CIDR_DATA];
};

struct cidr_svc {
	__u8  proto;             /* L4 code, 0 = any */
	__u8  plen;              /* the entry's own CIDR (counters) */
	__u16 lo;
	__u16 hi;
	__u8  pad[2];
	__u8  addr[16];
};

struct cidr_val {
	__u32 count;
	struct cidr_svc svc[CIDR_SLOTS];
};

/* addresses learned from DNS answers (dns(NAME) rules, plugin/dns): an LPM trie
 * keyed (source identity, family, address, L4 code, port). "any" is the
 * 152-bit prefix, a protocol with all ports 160 bits, a port range the
 * prefixes that cover it. The value says until when (boot-time ns,
 * bpf_ktime_get_boot_ns) and which grant wrote it (for the daemon's read-back). */
#define FQDN_DATA      24          /* 22 used, 2 zero */
#define FQDN_ANY_BITS  152
#define FQDN_L4_BITS   160
#define FQDN_FULL_BITS 176
#define FQDN_NAME      128
struct fqdn_key {
	__u32 prefixlen;
	__u8  data[FQDN_DATA];
};

struct fqdn_val {
	__u64 expires;           /* boot-time ns */
	__u16 lo;
	__u16 hi;
	__u8  l4;                /* the grant's L4 code (0: any) */
	__u8  pad;
	__u16 tag;               /* the rules that taught it (plugin/dns/store.py; 0: not known) */
	char  name[FQDN_NAME];   /* the DNS name answered (the daemon's read-back) */
};

/* counters of allowed flows: the policy key that opened them */
#define CK_POLICY 1
#define CK_CIDR   2
#define CK_FQDN   3          /* a learned DNS address: src, the grant's proto, lo, hi; dst: its tag */
struct count_key {
	__u8  kind;              /* CK_POLICY, CK_CIDR, CK_FQDN */
	__u8  direction;         /* cidr: DIR_* */
	__u8  proto;
	__u8  family;            /* cidr: 4 or 6 */
	__u16 src;               /* policy: src identity; cidr, fqdn: the segment */
	__u16 dst;               /* policy: dst identity; fqdn: the tag of the rules that taught it */
	__u16 lo;
	__u16 hi;
	__u8  plen;
	__u8  pad[3];
	__u8  addr[16];
};

struct drop_key {
	__u16 src;
	__u16 dst;
	__u8  reason;
	__u8  audit;
	__u16 pad;
};

struct count {
	__u64 packets;
	__u64 bytes;
};

/* Add one packet of ``len`` bytes (its L3 length) to this CPU's slot of ``key``
 * in the per-CPU hash ``map`` (``allowed``, ``dropped``). The first packet of a
 * key inserts it with BPF_NOEXIST, which sets this CPU's slot and zeroes the
 * others (kernel/bpf/hashtab.c, pcpu_init_value). When two CPUs count a new key
 * at once (two flows of one pair opening together), the second insert fails
 * with -EEXIST: it then adds to its own slot of the element the first made,
 * instead of losing its packet. A full map (-E2BIG) loses it. */
static __always_inline void count_add(void *map, const void *key, __u32 len)
{
	struct count one = { 1, len }, *c = bpf_map_lookup_elem(map, key);

	if (!c) {
		if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
			return;
		c = bpf_map_lookup_elem(map, key);
		if (!c)
			return;
	}
	c->packets += 1;
	c->bytes += len;
}

/* connection tracking: both directions of each judged flow */
struct ct_key {
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;             /* ICMP echo: the identifier in both */
	__u16 dport;
	__u8  proto;             /* IP protocol (58 for ICMPv6) */
	__u8  family;
	__u16 pad;               /* ICMP: which query (lib/parse.h icmp_flow_class); else 0 */
};

#define CT_REPLY  1          /* this is the reply direction's entry */
#define CT_DENIED 2          /* audit mode let a denied flow pass */
#define CT_FQDN   4          /* opened to a learned DNS address: goes on after the address
			      * expires, while a dns(...) rule of its segment names its service */
#define KIND_EW      1       /* member -> member */
#define KIND_EGRESS  2       /* member -> outside */
#define KIND_IN      3       /* outside -> member */
#define KIND_IN_DNAT 4       /* outside -> member, DNAT'd (a published port) */
#define KIND_IN_HOST 5       /* the host -> member */
#define KIND_HAIRPIN 6       /* member -> a published port of this network (judged at the sender) */
#define KIND_IN_HAIRPIN 7    /* the same flow arriving, DNAT'd and masqueraded, at its target */
struct ct_val {
	__u64 seen;              /* ktime ns of the last refresh */
	__u32 generation;
	__u8  flags;
	__u8  kind;
	__u16 pad;
	/* What the fast path (lib/fastpath.h) needs, as deliver() last found it
	 * for this direction: the sender (host-side veth, MAC: its endpoint,
	 * anti-spoofing passed) and the destination (host-side veth, MAC: an
	 * active member). Valid only while fast_generation is the generation in
	 * force (every change of endpoints, members, policy or mode bumps it);
	 * 0: none yet. */
	__u32 fast_generation;
	__u32 src_ifindex;
	__u32 peer_ifindex;
	__u8  src_mac[6];
	__u8  peer_mac[6];
	/* jiffies (bpf_jiffies64) when the fast path last read the clock for this
	 * entry and found it live; 0: never (ct_create, an older build's entry, and
	 * every write from user space: maps.py leaves these 8 bytes zero).
	 * lib/fastpath.h: FAST_CLOCK_JIFFIES */
	__u64 fast_seen;
};

/* published: (family, protocol, host port, host address or all zero for
 * every address) -> the member behind it: a member reaching it ("hairpin") is
 * judged as nftables judges a DNAT'd flow, before the DNAT has happened */
struct pub_key {
	__u8  family;
	__u8  proto;             /* 6 or 17 */
	__u16 port;              /* host port */
	__u8  addr[16];
};

struct pub_val {
	__u16 identity;
	__u16 port;              /* container port */
	__u32 pad;
};

/* logcap[0]: one token bucket over all reports of a network, as nftables'
 * named limit "logcap" (500/s, burst 1000), shared by every CPU */
#define REPORT_RATE_NS 2000000ULL     /* one token per 2 ms: 500 per second */
#define REPORT_BURST   1000
struct budget {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 last;
	__u64 tokens;
};

/* subnets: the network's own subnets (LPM trie; data = family, 3 zero bytes,
 * address). A destination in them that is no member is nobody's: not-member. */
#define SUBNET_FIXED_BITS 32
struct subnet_key {
	__u32 prefixlen;
	__u8  family;
	__u8  pad[3];
	__u8  addr[16];
};

/* one drop (or audit would-drop), to user space */
struct drop_event {
	__u64 tag;
	__u64 time;              /* ktime ns */
	__u8  reason;
	__u8  family;            /* 4, 6, or 0 for other frames */
	__u8  proto;
	__u8  audit;
	__u16 port;              /* destination port, 0 when none */
	__u16 ethertype;
	__u32 ifindex;
	__u16 src_id;
	__u16 dst_id;
	__u8  saddr[16];
	__u8  daddr[16];
	__u8  smac[6];
	__u8  dmac[6];
};

#endif
