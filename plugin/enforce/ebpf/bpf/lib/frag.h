/* IP fragments of a flow: judged by the ports of their first fragment.
 *
 * Only the first fragment of a datagram (offset 0, more-fragments set) carries
 * the L4 header; the others carry payload (RFC 791 section 2.3; RFC 8200
 * section 4.5: the fragment header's offset and M flag, and its 32-bit
 * identification). As Cilium's datapath does (bpf/lib/ipv4.h
 * ipv4_handle_fragmentation, the IPv6 fragment map of bpf/lib/ipv6.h), the
 * first fragment's ports are remembered in an LRU map keyed by (source,
 * destination, protocol, identification), and a later fragment takes them: it
 * is then judged as a packet of its flow -- the conntrack entry the first
 * fragment opened lets it pass, a denied flow's fragments are denied alike.
 * Ports are never read from a later fragment. A later fragment whose first
 * one this network has not seen (lost, out of order, or crafted) is dropped
 * as invalid in both modes: fail closed (nftables' conntrack never delivers a
 * datagram it cannot reassemble either).
 * The map (frags) is in lib/maps.h.
 * An IPv6 "atomic fragment" (offset 0, no M: RFC 6946) is a whole datagram. */
#ifndef SECNET_FRAG_H
#define SECNET_FRAG_H
#include "common.h"
#include "parse.h"
#include "maps.h"

static __always_inline void frag_key_of(struct pkt *p, struct frag_key *k)
{
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
	k->id = p->frag_id;
	k->proto = p->frag_proto;
	k->family = p->family;
}

/* A first fragment: remember its ports for the fragments that follow. Called
 * once its source is known not to be spoofed (from_container: after
 * check_source), so that no container can plant ports for another's datagram. */
static __always_inline void frag_remember(struct pkt *p)
{
	struct frag_key k = {};
	struct frag_val v = {};

	if (p->frag != FRAG_FIRST)
		return;
	frag_key_of(p, &k);
	v.sport = p->sport;
	v.dport = p->dport;
	v.proto = p->proto;
	v.l4 = p->l4;
	v.icmp_type = p->icmp_type;
	bpf_map_update_elem(&frags, &k, &v, BPF_ANY);
}

/* A later fragment takes its first fragment's proto, ports and L4 code.
 * 0: done (or ``p`` is no later fragment); -1: no first fragment seen: drop it. */
static __always_inline int frag_later(struct pkt *p)
{
	struct frag_key k = {};
	struct frag_val *v;

	if (p->frag != FRAG_LATER)
		return 0;
	frag_key_of(p, &k);
	v = bpf_map_lookup_elem(&frags, &k);
	if (!v)
		return -1;
	p->sport = v->sport;
	p->dport = v->dport;
	p->proto = v->proto;
	p->l4 = v->l4;
	p->icmp_type = v->icmp_type;
	return 0;
}

#endif
