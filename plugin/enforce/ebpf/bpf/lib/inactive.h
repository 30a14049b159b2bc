/* Pending and quarantined containers (and what passes unjudged): enforce mode
 * drops their packets; audit mode passes them as would-drops and reports them. */
#ifndef SECNET_INACTIVE_H
#define SECNET_INACTIVE_H
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "drop.h"
#include "conntrack.h"
#include "spoof.h"
#include "context.h"
#include "policy.h"
#include "lookup.h"

/* An IPv6 destination on the link: multicast (ff00::/8), link-local (fe80::/10)
 * or an address of the network's subnets (a member, the gateway). */
static __always_inline int on_link6(struct pkt *p)
{
	return p->daddr[0] == 0xff || (p->daddr[0] == 0xfe && (p->daddr[1] & 0xc0) == 0x80)
		|| in_subnets(p, p->daddr);
}

/* What both backends pass before judging, on the link only (U17-F1, U17-F4):
 * IGMP to an IPv4 multicast group (224.0.0.0/4: to the host; group_copy drops a
 * member's copies to other members); ND, MLD, router solicitations
 * and adverts to an on_link6() destination. Unicast IGMP, and these ICMPv6 types
 * routed elsewhere (the outside, another host address), are judged like any
 * other packet: egress, --internal, segments. */
static __always_inline int passes_unjudged(struct pkt *p)
{
	if (p->proto == IPPROTO_IGMP_ && p->family == 4)
		return (p->daddr[0] & 0xf0) == 0xe0;
	return p->proto == IPPROTO_ICMPV6_ && p->family == 6
		&& (nd_or_mld(p->icmp_type) || p->icmp_type == 134) && on_link6(p);
}

/* 1 when audit mode must drop an inactive container's packet as ``internal``
 * (``other``: the identity of the flow's other end): audit mode passes what policy
 * would drop, but --internal is Docker's setting and holds first (U11-F1), as
 * nftables' forward, host_in and from_host chains check it before "reserved".
 * In enforce mode the packet is dropped as quarantined or pending anyway. */
static __always_inline int audit_leaves_internal(struct ctx *c, struct pkt *p, __u16 other)
{
	return c->s->mode == MODE_AUDIT && c->s->internal && p->family && !passes_unjudged(p)
		&& (other == ID_OUTSIDE || other == ID_HOST);
}

/* Where a packet to or from an inactive container was first seen, as nftables sees it
 * (``seen`` of inactive()): its own packets and a member's reach the bridge table first,
 * which counts them as would-drops, then the inet table drops what opens no flow
 * (``ct state invalid``); a routed packet meets the inet forward hook first (dropped
 * there, never counted); the host's own packets have no invalid rule (host_out). */
#define SEEN_BRIDGED 0
#define SEEN_ROUTED  1
#define SEEN_HOST    2

/* A pending or quarantined container's packet (``kind``: of the flow it would open).
 * Audit mode passes it as a would-drop and reports a flow from its first packet
 * only, tracking it (denied) both ways: its replies are no flow of their own, as
 * nftables' conntrack sees them (U9-O5). Untracked packets (ND, ICMP errors, ARP)
 * are reported as before, but what nftables passes unjudged (ND, IGMP) is not, nor
 * an ICMP error of a tracked flow (nft's ``related``). A packet that opens no flow
 * (a RST or an echo reply of none: ct_opens()) is dropped as ``invalid`` in both
 * modes, as nftables does (fail closed), counted first as a would-drop when nftables'
 * bridge table counts it (``seen``: SEEN_BRIDGED; SEEN_HOST: never invalid). */
static __always_inline int inactive(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				    struct verdict *vd, __u8 kind, __u8 seen)
{
	struct ct_val *v;

	if (c->s->mode != MODE_AUDIT || !p->family)
		return deny(skb, p, vd, c->s->mode);
	v = ct_lookup(p);   /* reported under this generation (a flow opened before: again) */
	if ((v && (v->flags & CT_DENIED) && v->generation == c->st->generation) || passes_unjudged(p)
	    || (!v && ct_related(p, MODE_AUDIT))) {
		count_drop(skb, vd, 1);
		return TC_ACT_OK;
	}
	if (!v && seen != SEEN_HOST && !ct_opens(p, c->s->strict_tcp)) {
		if (seen == SEEN_BRIDGED)
			count_drop(skb, vd, 1);
		vd->reason = R_INVALID;
		return deny(skb, p, vd, MODE_ENFORCE);
	}
	ct_create(p, kind, CT_DENIED, c->st->generation);
	return deny(skb, p, vd, MODE_AUDIT);
}

/* A member's packet that opens no flow, to a pending or quarantined container (``dst``):
 * dropped as invalid at the sender, but in audit mode nftables' bridge table counted it
 * at that container's port first, as (outside) -> its state (inactive_judged). */
static __always_inline void invalid_to_inactive(struct __sk_buff *skb, struct ctx *c, __u16 dst)
{
	struct verdict vd = { .src = ID_OUTSIDE, .dst = dst, .reason = inactive_reason(dst) };

	if (c->s->mode == MODE_AUDIT && member_identity(dst) && !active_identity(dst))
		count_drop(skb, &vd, 1);
}

#endif
