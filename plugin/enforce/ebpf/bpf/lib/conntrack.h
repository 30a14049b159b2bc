/* Connection tracking of judged flows: both directions of a flow are
 * entries of one LRU hash, so a reply is one lookup. An entry remembers the
 * generation of the policy that judged it: after any change (policy, mode,
 * membership) the next packet of the flow is judged again from its original
 * direction, and the flow is cut when the new state denies it. */
#ifndef SECNET_CONNTRACK_H
#define SECNET_CONNTRACK_H
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "spoof.h"

#define CT_TCP_LIFETIME_NS   (6ULL * 3600 * 1000000000ULL)
#define CT_OTHER_LIFETIME_NS (180ULL * 1000000000ULL)
#define CT_REFRESH_NS        (1000000000ULL)

static __always_inline void ct_key_of(struct pkt *p, struct ct_key *k, int reverse)
{
	__builtin_memcpy(k->saddr, reverse ? p->daddr : p->saddr, 16);
	__builtin_memcpy(k->daddr, reverse ? p->saddr : p->daddr, 16);
	k->sport = reverse ? p->dport : p->sport;
	k->dport = reverse ? p->sport : p->dport;
	k->proto = p->proto;
	k->family = p->family;
	k->pad = (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_)
		? icmp_flow_class(p->family, p->icmp_type) : 0;
}

static __always_inline int ct_tracked(struct pkt *p)
{
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_)
		return icmp_query(p->family, p->icmp_type) != 0;
	return 1;
}

static __always_inline int echo_request(struct pkt *p)
{
	return (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_)
		&& icmp_query(p->family, p->icmp_type) == 1;
}

/* Can this untracked packet open a flow? What nftables' conntrack decides: a packet
 * it cannot start an entry with has no state, and secnet's "ct state invalid" rule
 * drops it as invalid (plugin/enforce/nftables/ruleset.py, chain forward). Not the
 * flooded copies of a broadcast or multicast, which nftables judges before its
 * conntrack rules (group_copy), nor a later fragment (judged by its first one's
 * ports, lib/frag.h: it has no flags); ``p``: parsed, no conntrack entry, not related.
 *   TCP: the first-packet column of Linux nf_conntrack_proto_tcp.c: the flags
 *   (ECE, CWR and PSH masked) must be a valid combination (tcp_valid_flags) and
 *   tcp_conntracks[0][index][TCP_CONNTRACK_NONE] no sIV: SYN or SYN|URG opens
 *   (SYN_SENT); ACK or ACK|URG opens too (ESTABLISHED, tcp_new's pick-up of a flow
 *   in its middle) while net.netfilter.nf_conntrack_tcp_loose is 1, its default
 *   (``strict_tcp``: the daemon's copy of it is 0, host.tcp_loose);
 *   SYN|ACK, RST, RST|ACK, FIN|ACK, SYN|FIN, none: invalid.
 *   ICMP: a request of a query (icmp_query: icmp_packet's and icmpv6_packet's
 *   valid_new); an ICMPv6 type conntrack leaves untracked (icmpv6_error's
 *   noct_valid_new: ND, MLD, router solicitation and advert); an error quoting
 *   no tracked flow, a reply, any other type: invalid.
 *   Other protocols open (their own trackers' checks, checksums: Known gaps). */
static __always_inline int ct_opens(struct pkt *p, __u8 strict_tcp)
{
	__u8 f = p->tcp_flags & 0x37;   /* without CWR 0x80, ECE 0x40, PSH 0x08 */

	if ((p->dmac[0] & 1) || p->frag == FRAG_LATER)
		return 1;
	if (p->proto == IPPROTO_TCP)
		return f == 0x02 || f == 0x22 || (!strict_tcp && (f == 0x10 || f == 0x30));
	if (p->proto == IPPROTO_ICMP && p->family == 4)
		return icmp_query(4, p->icmp_type) == 1;
	if (p->proto == IPPROTO_ICMPV6_ && p->family == 6)
		return icmp_query(6, p->icmp_type) == 1 || nd_or_mld(p->icmp_type) || p->icmp_type == 134;
	return 1;
}

/* The live entry of this packet's flow, or NULL. */
static __always_inline struct ct_val *ct_lookup(struct pkt *p)
{
	struct ct_key k = {};
	struct ct_val *v;
	__u64 now, life;
	__s64 age;

	if (!ct_tracked(p))
		return NULL;
	ct_key_of(p, &k, 0);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (!v)
		return NULL;
	if ((v->flags & CT_REPLY) && echo_request(p))
		return NULL;           /* a new echo in the other direction */
	now = bpf_ktime_get_ns();
	age = (__s64)(now - v->seen);   /* signed: the fast path stamps with the coarse clock */
	life = p->proto == IPPROTO_TCP ? CT_TCP_LIFETIME_NS : CT_OTHER_LIFETIME_NS;
	if (age > (__s64)life)
		return NULL;
	if (age > (__s64)CT_REFRESH_NS)
		v->seen = now;
	return v;
}

/* This packet's entry as it is (no liveness checks), or NULL. */
static __always_inline struct ct_val *ct_entry(struct pkt *p)
{
	struct ct_key k = {};

	ct_key_of(p, &k, 0);
	return bpf_map_lookup_elem(&conntrack, &k);
}

/* An ICMP error passes when the flow it quotes is tracked (either direction)
 * and it goes to the end that sent the quoted packet (its outer destination is
 * the quoted source): part of that flow, as nftables' "ct state related" sees it.
 * Linux drops an error to anyone else (nf_conntrack_inet_error(), "outer daddr
 * mismatch": no state, secnet's "ct state invalid" drops it); here it is judged
 * as a packet of its own, which opens no flow (ct_opens: invalid) (U17-F2). The
 * addresses are the container's side of any NAT (the kernel undid it, outer and
 * inner, before to_container; from_container sees them before it). A flow audit mode
 * let pass (CT_DENIED) was reported once as a would-drop; in audit mode its
 * errors pass with it, unreported (U12-F7); in enforce mode (an entry left from
 * audit mode) they are judged as packets of their own. ``mode``: the network's. */
static __always_inline int ct_related(struct pkt *p, __u8 mode)
{
	struct ct_val *v;

	if (!p->icmp_error || !eq16(p->daddr, p->inner.saddr))
		return 0;
	v = bpf_map_lookup_elem(&conntrack, &p->inner);
	return v && (!(v->flags & CT_DENIED) || mode == MODE_AUDIT);
}

static __always_inline void ct_create(struct pkt *p, __u8 kind, __u8 flags, __u32 gen)
{
	struct ct_key k = {};
	struct ct_val v = { .seen = bpf_ktime_get_ns(), .generation = gen, .flags = flags,
			    .kind = kind };

	if (!ct_tracked(p))
		return;
	ct_key_of(p, &k, 0);
	bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY);
	ct_key_of(p, &k, 1);
	v.flags |= CT_REPLY;
	bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY);
}

static __always_inline void ct_forget(struct pkt *p)
{
	struct ct_key k = {};

	ct_key_of(p, &k, 0);
	bpf_map_delete_elem(&conntrack, &k);
	ct_key_of(p, &k, 1);
	bpf_map_delete_elem(&conntrack, &k);
}

/* This packet as its flow's original direction (addresses and ports swapped for a reply). */
static __always_inline void ct_original(struct pkt *p, struct ct_val *v, struct pkt *o)
{
	__builtin_memcpy(o, p, sizeof(*o));
	if (o->proto == IPPROTO_ICMP || o->proto == IPPROTO_ICMPV6_)   /* tracked: queries */
		o->l4 = (o->icmp_type == 0 || o->icmp_type == 8 || o->icmp_type == 128 ||
			 o->icmp_type == 129) ? L4_ICMP_ECHO : L4_OTHER_ICMP;
	if (v->flags & CT_REPLY) {
		__builtin_memcpy(o->saddr, p->daddr, 16);
		__builtin_memcpy(o->daddr, p->saddr, 16);
		o->sport = p->dport;
		o->dport = p->sport;
	}
	__builtin_memcpy(o->osrc, o->saddr, 16);
}

#endif
