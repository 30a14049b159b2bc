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
