/* Connection tracking of judged flows: both directions of a flow are
 * entries of one LRU hash, so a reply is one lookup. An entry remembers the
 * generation of the policy that judged it: after any change (policy, mode,
 * membership) the next packet of the flow is judged again from its original
 * direction, and the flow is cut when the new state denies it.
 *
 * Two tables (lib/maps.h): a flow's first packet puts its entries in ct_new;
 * the first packet of its reply direction that answers it (ct_answers: for TCP
 * not a SYN|ACK or RST) moves them to conntrack (ct_answered), as the kernel's
 * conntrack marks an entry SEEN_REPLY, then ASSURED (an ICMP error is related,
 * not a reply). Both are LRU: a flood of unanswered flows evicts only
 * unanswered flows, as the kernel's early_drop takes only entries not
 * ASSURED (U21-F1; docs/ebpf.md "The flow tables"). A key is in one table
 * at a time: ct_create takes it out of conntrack, ct_answered out of ct_new;
 * so a lookup reads conntrack first (an established flow: one lookup, as the
 * fast path's) and ct_new only when conntrack has no entry. */
#ifndef SECNET_CONNTRACK_H
#define SECNET_CONNTRACK_H
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "spoof.h"
#include "lookup.h"

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

/* ``v`` if it is live for packet ``p`` (refreshed), else NULL. */
static __always_inline struct ct_val *ct_live(struct pkt *p, struct ct_val *v)
{
	__u64 now, life;
	__s64 age;

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

/* The first answer of a flow (ct_answers; ``k``: its key, ``v``: its entry in ct_new, CT_REPLY):
 * both its entries move to conntrack, each as it was (the original direction's
 * made from ``v`` when LRU took it from ct_new). Returns the entry in conntrack;
 * ``v`` (left in ct_new) when conntrack would not take it. */
static __always_inline struct ct_val *ct_answered(struct ct_key *k, struct ct_val *v)
{
	struct ct_key r = {};
	struct ct_val o, *got, *orig;

	__builtin_memcpy(r.saddr, k->daddr, 16);
	__builtin_memcpy(r.daddr, k->saddr, 16);
	r.sport = k->dport;
	r.dport = k->sport;
	r.proto = k->proto;
	r.family = k->family;
	r.pad = k->pad;
	orig = bpf_map_lookup_elem(&ct_new, &r);
	if (orig) {
		__builtin_memcpy(&o, orig, sizeof(o));
	} else {
		__builtin_memcpy(&o, v, sizeof(o));
		o.flags &= ~CT_REPLY;
		o.fast_generation = 0;   /* deliver() finds its ends again */
	}
	if (bpf_map_update_elem(&conntrack, &r, &o, BPF_ANY) || bpf_map_update_elem(&conntrack, k, v, BPF_ANY))
		return v;
	got = bpf_map_lookup_elem(&conntrack, k);
	if (!got)
		return v;
	bpf_map_delete_elem(&ct_new, k);
	bpf_map_delete_elem(&ct_new, &r);
	return got;
}

/* Does reply-direction packet ``p`` answer its flow (move it to conntrack)? Not a TCP
 * SYN|ACK or RST: a SYN flood's half-open connections and a scan's resets stay in
 * ct_new (the kernel's conntrack marks a TCP entry ASSURED, which early_drop spares,
 * when the handshake completes, nf_conntrack_proto_tcp.c; a RST ends it in CLOSE). So
 * a TCP flow moves with the first packet of its answering end after the handshake:
 * its ACK of the client's data or FIN, or its own data. Any other protocol: any reply
 * (an ICMP error is no reply: ct_related). */
static __always_inline int ct_answers(struct pkt *p)
{
	return p->proto != IPPROTO_TCP || !(p->tcp_flags & 0x06);   /* SYN 0x02, RST 0x04 */
}

/* The live entry of this packet's flow, or NULL; the flow's first answer
 * moves it to conntrack (ct_answers, ct_answered). */
static __always_inline struct ct_val *ct_lookup(struct pkt *p)
{
	struct ct_key k = {};
	struct ct_val *v;

	if (!ct_tracked(p))
		return NULL;
	ct_key_of(p, &k, 0);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (v)
		return ct_live(p, v);
	v = bpf_map_lookup_elem(&ct_new, &k);
	if (!v || !ct_live(p, v))
		return NULL;
	return ((v->flags & CT_REPLY) && ct_answers(p)) ? ct_answered(&k, v) : v;
}

/* This packet's entry as it is (no liveness checks), or NULL. */
static __always_inline struct ct_val *ct_entry(struct pkt *p)
{
	struct ct_key k = {};
	struct ct_val *v;

	ct_key_of(p, &k, 0);
	v = bpf_map_lookup_elem(&conntrack, &k);
	return v ? v : bpf_map_lookup_elem(&ct_new, &k);
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
 * audit mode) they are judged as packets of their own. ``mode``: the network's.
 * An error sent by a member (an address the network gave a container; not the
 * gateway, whose identity is the host's) is related only when that member is an
 * end of the quoted flow (the quoted destination, as the kernel of the end that
 * got the quoted packet sends it): a third member's error, from its own address,
 * quoting someone else's flow is no part of it (U23-F3); it opens no flow, so the
 * callers drop it as ``invalid``, as nftables' forward chain does. The gateway's
 * and routers' errors (not members) pass as before. */
static __always_inline int ct_related(struct pkt *p, __u8 mode)
{
	struct member *m;
	struct ct_val *v;

	if (!p->icmp_error || !eq16(p->daddr, p->inner.saddr))
		return 0;
	m = member_of(p, p->saddr);
	if (m && member_identity(m->identity) && !eq16(p->saddr, p->inner.daddr)
	    && !eq16(p->saddr, p->inner.saddr))
		return 0;
	v = bpf_map_lookup_elem(&conntrack, &p->inner);
	if (!v)
		v = bpf_map_lookup_elem(&ct_new, &p->inner);   /* (not a reply: it stays there) */
	return v && (!(v->flags & CT_DENIED) || mode == MODE_AUDIT);
}

/* A flow's first packet: its entries (both directions) in ct_new, each key out of
 * conntrack (what ct_lookup did not take: a dead entry, an echo's other direction). */
static __always_inline void ct_create(struct pkt *p, __u8 kind, __u8 flags, __u32 gen)
{
	struct ct_key k = {};
	struct ct_val v = { .seen = bpf_ktime_get_ns(), .generation = gen, .flags = flags,
			    .kind = kind };

	if (!ct_tracked(p))
		return;
	ct_key_of(p, &k, 0);
	if (bpf_map_lookup_elem(&conntrack, &k))
		bpf_map_delete_elem(&conntrack, &k);
	bpf_map_update_elem(&ct_new, &k, &v, BPF_ANY);
	ct_key_of(p, &k, 1);
	if (bpf_map_lookup_elem(&conntrack, &k))
		bpf_map_delete_elem(&conntrack, &k);
	v.flags |= CT_REPLY;
	bpf_map_update_elem(&ct_new, &k, &v, BPF_ANY);
}

/* The flow of ``p`` is cut: its entries go, from whichever table holds them. */
static __always_inline void ct_forget(struct pkt *p)
{
	struct ct_key k = {};

	ct_key_of(p, &k, 0);
	bpf_map_delete_elem(&conntrack, &k);
	bpf_map_delete_elem(&ct_new, &k);
	ct_key_of(p, &k, 1);
	bpf_map_delete_elem(&conntrack, &k);
	bpf_map_delete_elem(&ct_new, &k);
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
