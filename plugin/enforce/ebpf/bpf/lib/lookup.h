/* Addresses -> what the network knows of them: the member (identity, veth)
 * holding an address (``members``), the member behind a published port
 * (``published``), and whether an address is in the network's subnets. */
#ifndef SECNET_LOOKUP_H
#define SECNET_LOOKUP_H
#include "common.h"
#include "maps.h"
#include "parse.h"

static __always_inline struct member *member_of(struct pkt *p, __u8 *addr)
{
	struct addr_key k = { .family = p->family };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&members, &k);
}

static __always_inline __u16 identity_of(struct pkt *p, __u8 *addr)
{
	struct member *m = member_of(p, addr);

	return m ? m->identity : ID_OUTSIDE;
}

/* The identity of what an inactive container sends to: its destination's, an ARP
 * frame's target address's (IPv4; parse() keeps it in daddr), as nftables' bridge
 * table names the pair ("arp daddr ip", drops.py: INACTIVE_PAIR_SETS; U14-F1). */
static __always_inline __u16 target_identity(struct pkt *p)
{
	struct addr_key k = { .family = p->family ? p->family : (p->ethertype == ETH_P_ARP_ ? 4 : 0) };
	struct member *m;

	__builtin_memcpy(k.addr, p->daddr, 16);
	m = bpf_map_lookup_elem(&members, &k);
	return m ? m->identity : ID_OUTSIDE;
}

/* The member behind a published port this packet is addressed to, if any
 * (``local``: the destination is the host's own, so "every address" counts). */
static __always_inline struct pub_val *published_of(struct pkt *p, int local)
{
	struct pub_key k = { .family = p->family, .proto = p->proto, .port = p->dport };
	struct pub_val *v;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return NULL;
	__builtin_memcpy(k.addr, p->daddr, 16);
	v = bpf_map_lookup_elem(&published, &k);
	if (v || !local)
		return v;
	__builtin_memset(k.addr, 0, 16);
	return bpf_map_lookup_elem(&published, &k);
}

/* 1: ``p``'s destination is an address of the host itself (any link's, not only
 * the bridge's): the FIB of the host's namespace routes it locally. The kernel's
 * bpf_fib_lookup (tc programs: Linux 4.18; net/core/filter.c bpf_ipv4_fib_lookup,
 * bpf_ipv6_fib_lookup) answers BPF_FIB_LKUP_RET_NOT_FWDED for a route that is not
 * unicast (RTN_LOCAL: a host address; also broadcast, multicast and "no route");
 * the frame must be unicast to the host (the bridge's MAC), which leaves local
 * and unroutable destinations. nat_pre DNATs a published port only for a local
 * one (``fib daddr type local``); an unroutable one goes nowhere either way. */
static __always_inline int host_address(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_fib_lookup f = { .ifindex = skb->ifindex };

	if (p->dmac[0] & 1)
		return 0;
	if (p->family == 4) {
		f.family = 2;    /* AF_INET */
		__builtin_memcpy(&f.ipv4_src, p->saddr, 4);
		__builtin_memcpy(&f.ipv4_dst, p->daddr, 4);
	} else {
		f.family = 10;   /* AF_INET6 */
		__builtin_memcpy(f.ipv6_src, p->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, p->daddr, 16);
	}
	return bpf_fib_lookup(skb, &f, sizeof(f), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* The member behind the published port a member's packet is addressed to (a
 * hairpin), if any: a mapping of that very host address, or a wildcard one when
 * the destination is the host's (the bridge's gateway, ``dst`` ID_HOST, or any
 * other local address: host_address, asked only when a wildcard mapping of the
 * protocol and port exists). */
static __always_inline struct pub_val *hairpin_of(struct __sk_buff *skb, struct pkt *p, __u16 dst)
{
	struct pub_key k = { .family = p->family, .proto = p->proto, .port = p->dport };
	struct pub_val *v = published_of(p, 0);

	if (v || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return v;
	v = bpf_map_lookup_elem(&published, &k);   /* the wildcard mapping (address all zero) */
	if (v && (dst == ID_HOST || host_address(skb, p)))
		return v;
	return NULL;
}

static __always_inline int member_identity(__u16 id)
{
	return id != ID_OUTSIDE && id != ID_HOST;
}

/* 1: ``addr`` is in one of the network's subnets. */
static __always_inline int in_subnets(struct pkt *p, __u8 *addr)
{
	struct subnet_key k = { .prefixlen = SUBNET_FIXED_BITS + (p->family == 4 ? 32 : 128),
				.family = p->family };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&subnets, &k) != NULL;
}

#endif
