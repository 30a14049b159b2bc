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

/* What nftables passes before judging (ND, MLD, router solicitations, IGMP). */
static __always_inline int passes_unjudged(struct pkt *p)
{
	if (p->proto == IPPROTO_IGMP_ && p->family == 4)
		return 1;
	return p->proto == IPPROTO_ICMPV6_ && (nd_or_mld(p->icmp_type) || p->icmp_type == 134);
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

/* A pending or quarantined container's packet (``kind``: of the flow it would open).
 * Audit mode passes it as a would-drop and reports a flow from its first packet
 * only, tracking it (denied) both ways: its replies are no flow of their own, as
 * nftables' conntrack sees them (U9-O5). Untracked packets (ND, ICMP errors, ARP)
 * are reported as before, but what nftables passes unjudged (ND, IGMP) is not. */
static __always_inline int inactive(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				    struct verdict *vd, __u8 kind)
{
	struct ct_val *v;

	if (c->s->mode != MODE_AUDIT || !p->family)
		return deny(skb, p, vd, c->s->mode);
	v = ct_lookup(p);   /* reported under this generation (a flow opened before: again) */
	if ((v && (v->flags & CT_DENIED) && v->generation == c->st->generation) || passes_unjudged(p)) {
		count_drop(skb, vd, 1);
		return TC_ACT_OK;
	}
	ct_create(p, kind, CT_DENIED, c->st->generation);
	return deny(skb, p, vd, MODE_AUDIT);
}

#endif
