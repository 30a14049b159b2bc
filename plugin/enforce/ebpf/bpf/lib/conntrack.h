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
	k->pad = 0;
}

static __always_inline int ct_tracked(struct pkt *p)
{
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_)
		return p->sport || p->icmp_type == 8 || p->icmp_type == 0 || p->icmp_type == 128
			|| p->icmp_type == 129;
	return 1;
}

static __always_inline int echo_request(struct pkt *p)
{
	return (p->proto == IPPROTO_ICMP && p->icmp_type == 8)
		|| (p->proto == IPPROTO_ICMPV6_ && p->icmp_type == 128);
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

/* An ICMP error passes when the flow it quotes is tracked (either direction):
 * part of that flow, as nftables' "ct state related" sees it. A flow audit mode
 * let pass (CT_DENIED) was reported once as a would-drop; in audit mode its
 * errors pass with it, unreported (U12-F7); in enforce mode (an entry left from
 * audit mode) they are judged as packets of their own. ``mode``: the network's. */
static __always_inline int ct_related(struct pkt *p, __u8 mode)
{
	struct ct_val *v;

	if (!p->icmp_error)
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
	if (o->proto == IPPROTO_ICMP || o->proto == IPPROTO_ICMPV6_)
		o->l4 = L4_ICMP_ECHO;   /* tracked ICMP flows are echoes */
	if (v->flags & CT_REPLY) {
		__builtin_memcpy(o->saddr, p->daddr, 16);
		__builtin_memcpy(o->daddr, p->saddr, 16);
		o->sport = p->dport;
		o->dport = p->sport;
	}
	__builtin_memcpy(o->osrc, o->saddr, 16);
}

#endif
