/* The fast path of from_container: a packet of an east-west flow that is
 * already judged goes straight to the destination container, in as few
 * memory touches as the checks allow (on a cold cache every map lookup and
 * every line of program text costs: this is what the RTT of a ping pays).
 *
 * It only takes the packets for which the full path (secnet.c) would end in
 * deliver()'s bpf_redirect_peer, with the same checks in the same order and
 * the same side effects (the conntrack entry's refresh, the mark cleared):
 *   untagged (no 802.1Q tag in the skb's metadata: check_source drops it),
 *   IPv4 without options, not a fragment (lib/frag.h remembers first
 *   fragments' ports), or IPv6 without extension
 *   headers or a link-local source; TCP, UDP, or an ICMP/ICMPv6 echo
 *   request or reply, but no DNS flow (dns_flow: deliver() bridges it);
 *   the L4 header in the linear data; a live conntrack
 *   entry judged under the generation in force as east-west, whose sender
 *   and destination deliver() found under that generation too: the frame
 *   comes from that sender's veth and MAC (its address is the entry's key:
 *   the anti-spoofing the full path applied to it still holds) and is
 *   addressed to that destination's MAC. Any change of endpoints, members,
 *   policy or mode bumps the generation, so nothing the entry remembers
 *   outlives the state it was read from: the flow takes the full path once
 *   and deliver() remembers it anew.
 * So a judged packet costs one hash lookup (and the state array's).
 * Anything else returns FAST_NO and takes the full path, which judges it
 * exactly as before. */
#ifndef SECNET_FASTPATH_H
#define SECNET_FASTPATH_H
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "conntrack.h"
#include "spoof.h"

#define FAST_NO (-1)

/* The flow key (ct_key_of's, original direction as sent) of an IPv4 or
 * IPv6 packet, its source and destination MAC and echo-request flag;
 * FAST_NO unless the packet is of a kind the fast path takes. */
static __always_inline int fast_key(struct __sk_buff *skb, struct ct_key *k, __u8 **smac,
				    __u8 **dmac, int *echo_req)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *l4;

	if ((void *)(eth + 1) > end || skb->vlan_present)
		return FAST_NO;   /* (a tagged frame: check_source drops it) */
	*smac = eth->h_source;
	*dmac = eth->h_dest;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || !ip->saddr)
			return FAST_NO;
		__builtin_memcpy(k->saddr, &ip->saddr, 4);
		__builtin_memcpy(k->daddr, &ip->daddr, 4);
		k->proto = ip->protocol;
		k->family = 4;
		l4 = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return FAST_NO;
		if (ip6->saddr.s6_addr[0] == 0xfe && (ip6->saddr.s6_addr[1] & 0xc0) == 0x80)
			return FAST_NO;   /* link-local: check_ipv6's rules (the full path) */
		__builtin_memcpy(k->saddr, &ip6->saddr, 16);
		__builtin_memcpy(k->daddr, &ip6->daddr, 16);
		k->proto = ip6->nexthdr;
		k->family = 6;
		l4 = (void *)(ip6 + 1);
	} else {
		return FAST_NO;
	}
	if ((void *)(l4 + 8) > end)
		return FAST_NO;
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP) {
		k->sport = (l4[0] << 8) | l4[1];
		k->dport = (l4[2] << 8) | l4[3];
		*echo_req = 0;
		return dns_flow(k->proto, k->sport, k->dport) ? FAST_NO : 0;   /* deliver() bridges it */
	}
	if ((k->family == 4 && k->proto == IPPROTO_ICMP && (l4[0] == 8 || l4[0] == 0))
	    || (k->family == 6 && k->proto == IPPROTO_ICMPV6_ && (l4[0] == 128 || l4[0] == 129))) {
		k->sport = k->dport = (l4[4] << 8) | l4[5];
		*echo_req = l4[0] == 8 || l4[0] == 128;
		return 0;
	}
	return FAST_NO;
}

/* How long after the fast path read the clock and found an entry live it
 * trusts the entry without reading it again: 100 jiffies, at most 1 s (Linux's
 * HZ is 100 to 1000). At that read the entry is refreshed when older than
 * CT_REFRESH_NS (1 s), so a packet taken on trust sees an entry at most 2 s
 * old: far inside every lifetime (180 s, 6 h), and ``seen`` lags at most 2 s. */
#define FAST_CLOCK_JIFFIES 100

/* 1: entry ``v`` (protocol ``proto``) is live, refreshed as ct_lookup() does.
 * The clock is a helper call; jiffies is one load the verifier inlines
 * (bpf_jiffies64, Linux 5.5; kernel/bpf/verifier.c do_misc_fixups) of a
 * variable every tick writes. So the clock is read once per FAST_CLOCK_JIFFIES
 * per entry: from_container per run x0.80 under iperf3, x0.83 under sockperf
 * (interleaved A/B; cold runs and ping RTT unchanged,
 * bench/results/2026-12-01-ebpfcold.md). The coarse clock (Linux 5.11): the same
 * CLOCK_MONOTONIC from the last tick; it can lag an entry that ct_create()
 * stamped with the fine clock, hence the signed age. */
static __always_inline int fast_live(struct ct_val *v, __u8 proto)
{
	__u64 j = bpf_jiffies64(), now, life;
	__s64 age;

	if (v->fast_seen && j - v->fast_seen < FAST_CLOCK_JIFFIES)
		return 1;
	now = bpf_ktime_get_coarse_ns();
	age = (__s64)(now - v->seen);
	life = proto == IPPROTO_TCP ? CT_TCP_LIFETIME_NS : CT_OTHER_LIFETIME_NS;
	if (age > (__s64)life)
		return 0;
	if (age > (__s64)CT_REFRESH_NS)
		v->seen = now;
	v->fast_seen = j;
	return 1;
}

/* bpf_redirect_peer's verdict for a judged east-west packet, or FAST_NO. */
static __always_inline int fast_path(struct __sk_buff *skb)
{
	struct ct_key k = {};
	struct state *st;
	struct ct_val *v;
	__u32 zero = 0;
	__u8 *smac, *dmac;
	int echo_req;

	if (fast_key(skb, &k, &smac, &dmac, &echo_req))
		return FAST_NO;
	st = bpf_map_lookup_elem(&state, &zero);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (!st || !v || v->generation != st->generation || v->kind != KIND_EW
	    || v->fast_generation != st->generation || !v->peer_ifindex
	    || v->src_ifindex != skb->ifindex || ((v->flags & CT_REPLY) && echo_req)
	    || !eq_mac(smac, v->src_mac) || !eq_mac(dmac, v->peer_mac))
		return FAST_NO;
	if (!fast_live(v, k.proto))
		return FAST_NO;
	skb->mark = 0;   /* as deliver(): the container gets what a veth hands over */
	bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
	return bpf_redirect_peer(v->peer_ifindex, 0);
}

#endif
