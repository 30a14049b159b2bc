/* Anti-spoofing of what a container sends, as the nftables bridge table does:
 * its own MAC; ARP only for its own IPv4 address and MAC; IPv4 and IPv6 only
 * from its own addresses, its link-local one being the EUI-64 address of its
 * MAC (address resolution, DAD and multicast listener reports pass unjudged,
 * the rest is judged by policy as from its global address); neighbour
 * adverts and DAD solicitations only for its own addresses; never router adverts or redirects (a
 * container must not become its neighbours' router); nothing but ARP, IPv4
 * and IPv6, untagged. */
#ifndef SECNET_SPOOF_H
#define SECNET_SPOOF_H
#include "common.h"
#include "parse.h"

#define SRC_POLICY 0    /* an IP packet from the container's own address: judge it */
#define SRC_PASS   1    /* address resolution and the like: no policy */

/* Branch-free comparisons (loops over bytes explode the verifier's states).
 * Arguments are 8-byte aligned (map values, struct pkt, aligned locals). */
static __always_inline int eq16(const void *a, const void *b)
{
	const __u64 *x = a, *y = b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
}

static __always_inline int zero16(const void *a)
{
	const __u64 *x = a;

	return (x[0] | x[1]) == 0;
}

static __always_inline int eq4(const void *a, const void *b)
{
	return *(const __u32 *)a == *(const __u32 *)b;
}

static __always_inline int eq_mac(const void *a, const void *b)
{
	return *(const __u32 *)a == *(const __u32 *)b
		&& *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int nd_or_mld(__u8 type)
{
	return type == 133 || type == 135 || type == 136
		|| type == 130 || type == 131 || type == 132 || type == 143;
}

static __always_inline int check_arp(struct __sk_buff *skb, struct endpoint *ep)
{
	/* after htype ptype hlen plen oper: sender MAC, sender IPv4 */
	__u8 sha[8] __attribute__((aligned(8))) = {}, spa[4] __attribute__((aligned(4))) = {};

	if (bpf_skb_load_bytes(skb, 14 + 8, sha, 6) || bpf_skb_load_bytes(skb, 14 + 14, spa, 4))
		return -R_SPOOFED;
	if (!eq_mac(sha, ep->mac) || !eq4(spa, ep->ipv4) || *(__u32 *)ep->ipv4 == 0)
		return -R_SPOOFED;
	return SRC_PASS;
}

static __always_inline int check_ipv6(struct __sk_buff *skb, struct pkt *p, struct endpoint *ep)
{
	int icmp = p->proto == IPPROTO_ICMPV6_;
	int link_local = p->saddr[0] == 0xfe && (p->saddr[1] & 0xc0) == 0x80;
	__u8 target[16] __attribute__((aligned(8)));

	/* a neighbour advert, and a DAD solicitation (from ::, RFC 4862 5.4.3: one for a
	 * tentative address makes it a duplicate), only for its own addresses (U23-F2) */
	if (icmp && (p->icmp_type == 136 || (p->icmp_type == 135 && zero16(p->saddr)))) {
		if (bpf_skb_load_bytes(skb, p->l4off + 8, target, 16))
			return -R_SPOOFED;
		if (!eq16(target, ep->ll6) && (zero16(ep->ipv6) || !eq16(target, ep->ipv6)))
			return -R_SPOOFED;
	}
	if (link_local && !eq16(p->saddr, ep->ll6))
		return -R_SPOOFED;
	if ((link_local || zero16(p->saddr)) && icmp && nd_or_mld(p->icmp_type))
		return SRC_PASS;
	/* its own link-local address is one of its addresses (members): judged (U10-F4) */
	if (!link_local && (zero16(ep->ipv6) || !eq16(p->saddr, ep->ipv6)))
		return -R_SPOOFED;
	/* from its own address, but a container must not become its neighbours' router */
	if (icmp && (p->icmp_type == 134 || p->icmp_type == 137))
		return -R_ROUTER;
	return SRC_POLICY;
}

/* SRC_POLICY, SRC_PASS, or minus the reason to drop. */
static __always_inline int check_source(struct __sk_buff *skb, struct pkt *p, struct endpoint *ep)
{
	if (!eq_mac(p->smac, ep->mac))
		return -R_SPOOFED;
	/* An 802.1Q/802.1ad tag: the receiving veth moved it into the skb's metadata
	 * (skb_vlan_untag in __netif_receive_skb_core, before tc ingress), so the data
	 * shows the inner ethertype, which parse() read. secnet networks carry no
	 * VLANs: dropped as nftables' bridge table drops it (its "ether type" puts the
	 * tag back, nft_payload_copy_vlan, and sees 0x8100/0x88a8). */
	if (skb->vlan_present)
		return -R_ETHERTYPE;
	if (p->ethertype == ETH_P_ARP_)
		return check_arp(skb, ep);
	if (p->family == 4)
		return (eq4(p->saddr, ep->ipv4) && *(__u32 *)ep->ipv4) ? SRC_POLICY : -R_SPOOFED;
	if (p->family == 6)
		return check_ipv6(skb, p, ep);
	return -R_ETHERTYPE;
}

#endif
