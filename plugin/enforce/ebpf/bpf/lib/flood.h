/* What the bridge floods to a container's port: a copy of a member's broadcast or
 * multicast frame (judged per receiving port, as nftables' bridge table does) and
 * frames meant for other ports (to_container drops or passes them unjudged). */
#ifndef SECNET_FLOOD_H
#define SECNET_FLOOD_H
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "drop.h"
#include "context.h"
#include "spoof.h"

/* A copy of another member's broadcast or multicast frame (the bridge floods it to
 * every port): it passes when the sender's segment (its port's identity) is this
 * container's and that segment's members may send each other anything (an (s, s, any)
 * entry of the policy map: intra=allow), else it is dropped as no-rule -- never into
 * another segment (nftables: the bridge table's group_copy). ARP, and ND and MLD on
 * the link, passed before (passes_unjudged): address resolution crosses segments.
 * IGMP is for the host (the bridge's multicast snooping, a querier): a copy of a
 * member's IGMP to another member is dropped without a reason, in both modes, not a
 * policy verdict (U17-F1: it carried any payload across segments; nftables drops it
 * so in its group_copy chain, "igmp copy"). */
static __always_inline int group_copy(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				      __u16 src, __u16 dst)
{
	struct verdict vd = { .src = src, .dst = dst, .reason = R_NO_RULE };
	struct policy_key k = { .prefixlen = 40 };   /* the (version, src, dst) prefix: "any" */

	if (p->proto == IPPROTO_IGMP_ && p->family == 4)
		return TC_ACT_SHOT;

	k.data[0] = c->ver;
	k.data[1] = src >> 8;
	k.data[2] = src & 0xff;
	k.data[3] = dst >> 8;
	k.data[4] = dst & 0xff;
	if (src == dst && bpf_map_lookup_elem(&policy, &k))
		return TC_ACT_OK;
	return deny(skb, p, &vd, c->s->mode);
}

/* Is a frame at this container's port meant for it: sent to its MAC, or an ARP
 * request or IPv6 neighbour solicitation for one of its addresses? The bridge
 * floods the rest (broadcasts, multicasts, unlearned unicast) to every port. */
static __always_inline int meant_for(struct __sk_buff *skb, struct pkt *p, struct endpoint *ep)
{
	__u8 target[16];

	if (!(p->dmac[0] & 1))
		return eq_mac(p->dmac, ep->mac);
	if (p->ethertype == ETH_P_ARP_)
		return eq4(p->daddr, ep->ipv4);
	if (p->family != 6 || p->proto != IPPROTO_ICMPV6 || p->icmp_type != 135 ||
	    bpf_skb_load_bytes(skb, p->l4off + 8, target, 16))
		return 0;
	return eq16(target, ep->ipv6) || eq16(target, ep->ll6);
}

#endif
