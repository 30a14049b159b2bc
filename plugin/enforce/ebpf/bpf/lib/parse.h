/* Parse a frame into what the policy needs: addresses, L4 protocol, ports,
 * and for an ICMP error the flow it is about (so that errors of allowed
 * flows pass like nftables' "related"). Up to EXT_HEADERS_MAX IPv6 extension
 * headers are walked; a packet with more is unparsable (dropped as invalid). */
#ifndef SECNET_PARSE_H
#define SECNET_PARSE_H
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include "common.h"

#define ETH_P_ARP_ 0x0806
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_IGMP_ 2
#define IPPROTO_FRAGMENT_ 44

#define FRAG_NONE  0
#define FRAG_FIRST 1             /* offset 0, more fragments follow: has the L4 header */
#define FRAG_LATER 2             /* offset > 0: payload only, no L4 header */

struct pkt {
	__u16 ethertype;
	__u8  family;            /* 4, 6, or 0 */
	__u8  proto;             /* IP protocol */
	__u8  l4;                /* L4 code for the policy map */
	__u8  icmp_type;
	__u8  icmp_error;        /* 1: an ICMP error; inner holds its flow */
	__u8  frag;              /* FRAG_NONE, FRAG_FIRST, FRAG_LATER (lib/frag.h) */
	__u16 sport;
	__u16 dport;
	__u32 l4off;
	__u32 frag_id;           /* a fragment's identification (host order) */
	__u8  frag_proto;        /* and its protocol: IPv4's, or IPv6's fragment header's next header */
	__u8  tcp_flags;         /* TCP: the flags byte (CWR ECE URG ACK PSH RST SYN FIN); 0 if truncated */
	__u8  pad[2];
	__u8  saddr[16] __attribute__((aligned(8)));
	__u8  daddr[16] __attribute__((aligned(8)));
	/* the source the ingress policy judges and reports: saddr, or the
	 * original source of a flow netfilter NAT'd on its way in (lib/nat.h) */
	__u8  osrc[16] __attribute__((aligned(8)));
	__u8  smac[8] __attribute__((aligned(8)));   /* 6 used */
	__u8  dmac[8] __attribute__((aligned(8)));
	struct ct_key inner __attribute__((aligned(8)));
};

/* The ICMP errors that conntrack relates to the flow they quote, as nftables'
 * "ct state related" sees them: destination unreachable, source quench, redirect,
 * time exceeded, parameter problem (Linux nf_conntrack_proto_icmp.c icmp_is_err);
 * for ICMPv6 every type below 128, the error range of RFC 4443 section 2.1
 * (nf_conntrack_proto_icmpv6.c: "is not error message ?" type >= 128). */
static __always_inline int icmp_is_error(__u8 family, __u8 type)
{
	if (family == 4)
		return (type >= 3 && type <= 5) || type == 11 || type == 12;
	return type < 128;
}

static __always_inline int icmp_is_echo(__u8 family, __u8 type)
{
	return family == 4 ? type == 8 : type == 128;
}

/* ICMP queries conntrack tracks by their identifier (Linux nf_conntrack_proto_icmp.c
 * and nf_conntrack_proto_icmpv6.c, invmap): 1 for a request (what may open a flow,
 * their valid_new), 2 for its reply, 0 for any other type. IPv4: echo 8/0,
 * timestamp 13/14, information 15/16, address mask 17/18; IPv6: echo 128/129,
 * node information 139/140. */
static __always_inline int icmp_query(__u8 family, __u8 type)
{
	if (family == 4) {
		if (type == 8 || type == 13 || type == 15 || type == 17)
			return 1;
		return (type == 0 || type == 14 || type == 16 || type == 18) ? 2 : 0;
	}
	if (type == 128 || type == 139)
		return 1;
	return (type == 129 || type == 140) ? 2 : 0;
}

/* Which query a tracked ICMP flow is, for its conntrack key's ``pad`` (conntrack's
 * tuple holds the type: an echo and a timestamp with one identifier are two flows):
 * 0 for an echo (the fast path's keys) and for what is no query, else the request's
 * type (13 for a timestamp request or reply). */
static __always_inline __u16 icmp_flow_class(__u8 family, __u8 type)
{
	int q = icmp_query(family, type);

	if (!q || type == 8 || type == 0 || type == 128 || type == 129)
		return 0;
	return q == 1 ? type : type - 1;
}

/* The flow an ICMP error quotes: its IP header and first L4 bytes. */
static __always_inline void parse_inner(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = p->l4off + 8;
	__u8 buf[4] = {};

	p->inner.family = p->family;
	if (p->family == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return;
		__builtin_memcpy(p->inner.saddr, &ip.saddr, 4);
		__builtin_memcpy(p->inner.daddr, &ip.daddr, 4);
		p->inner.proto = ip.protocol;
		off += (ip.ihl & 0xf) * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return;
		__builtin_memcpy(p->inner.saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->inner.daddr, &ip6.daddr, 16);
		p->inner.proto = ip6.nexthdr;
		off += sizeof(ip6);
	}
	if (p->inner.proto == IPPROTO_TCP || p->inner.proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, off, buf, 4))
			return;
		p->inner.sport = (buf[0] << 8) | buf[1];
		p->inner.dport = (buf[2] << 8) | buf[3];
	} else if (p->inner.proto == IPPROTO_ICMP || p->inner.proto == IPPROTO_ICMPV6_) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, off, &type, 1) || bpf_skb_load_bytes(skb, off + 4, buf, 2))
			return;
		p->inner.sport = p->inner.dport = (buf[0] << 8) | buf[1];
		p->inner.pad = icmp_flow_class(p->family, type);
	}
	p->icmp_error = 1;
}

static __always_inline void parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 l4[8] = {};     /* ports, or ICMP type, code, checksum, identifier */

	p->l4 = p->proto;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, p->l4off, l4, 4))
			return;
		p->sport = (l4[0] << 8) | l4[1];
		p->dport = (l4[2] << 8) | l4[3];
		if (p->proto == IPPROTO_TCP)
			bpf_skb_load_bytes(skb, p->l4off + 13, &p->tcp_flags, 1);
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6_) {
		if (bpf_skb_load_bytes(skb, p->l4off, l4, 8))
			return;
		p->icmp_type = l4[0];
		p->l4 = L4_OTHER_ICMP;
		if (icmp_is_echo(p->family, l4[0]))
			p->l4 = L4_ICMP_ECHO;
		if (icmp_query(p->family, l4[0]))
			p->sport = p->dport = (l4[4] << 8) | l4[5];
		if (icmp_is_error(p->family, l4[0]))
			parse_inner(skb, p);
	}
}

/* How many IPv6 extension headers the walk reads; a packet with more is dropped
 * (invalid). RFC 8200 section 4.1 orders at most 8 kinds, each once but
 * destination options twice: 16 is more than any legitimate chain needs. */
#define EXT_HEADERS_MAX 16
#define IPPROTO_AH_ 51

static __always_inline int ext_header(__u8 proto)
{
	return proto == 0 || proto == 43 || proto == 60 || proto == IPPROTO_FRAGMENT_
		|| proto == IPPROTO_AH_;
}

/* Walk IPv6 extension headers (hop-by-hop, routing, destination options,
 * fragment, authentication: the ones Linux's ipv6_find_hdr walks, as nftables'
 * "meta l4proto" does; MLD reports carry a hop-by-hop header) to the L4 header.
 * A fragment header (RFC 8200 section 4.5: next header, reserved, offset << 3 |
 * M, identification) marks the packet a fragment; after a later fragment's
 * header comes payload, not headers: the walk stops there. An AH header's length
 * is in 4-byte units minus 2 (RFC 4302 section 2.2), the others' in 8-byte units
 * minus 1 (RFC 8200 section 4.3). Returns 0, or -1 (fail closed: invalid) when
 * a header is cut short or the chain is longer than EXT_HEADERS_MAX headers:
 * judged by the next-header value after them, it would be judged as another
 * protocol than its receiver sees (U17-F5, U17-F7: an RA behind 5 headers). */
static __always_inline int skip_ext_headers(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[8];

	for (int i = 0; i < EXT_HEADERS_MAX; i++) {
		if (!ext_header(p->proto))
			return 0;
		if (bpf_skb_load_bytes(skb, p->l4off, hdr, 8))
			return -1;
		if (p->proto == IPPROTO_FRAGMENT_) {
			__u16 off = (hdr[2] << 8) | hdr[3];

			p->l4off += 8;
			p->proto = hdr[0];
			if (!(off & 0xfff9))
				continue;   /* an atomic fragment (RFC 6946): a whole datagram */
			p->frag = off & 0xfff8 ? FRAG_LATER : FRAG_FIRST;
			p->frag_proto = hdr[0];
			p->frag_id = ((__u32)hdr[4] << 24) | (hdr[5] << 16) | (hdr[6] << 8) | hdr[7];
			if (p->frag == FRAG_LATER)
				return 0;
			continue;
		}
		p->l4off += p->proto == IPPROTO_AH_ ? (hdr[1] + 2) * 4 : (hdr[1] + 1) * 8;
		p->proto = hdr[0];
	}
	return ext_header(p->proto) ? -1 : 0;
}

/* ARP: the sender and target IPv4 addresses (what a report shows; family stays 0) */
static __always_inline void parse_arp(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[8] = {};

	if (bpf_skb_load_bytes(skb, 14, hdr, 8) || hdr[4] != 6 || hdr[5] != 4)
		return;
	bpf_skb_load_bytes(skb, 14 + 14, p->saddr, 4);
	bpf_skb_load_bytes(skb, 14 + 24, p->daddr, 4);
	__builtin_memcpy(p->osrc, p->saddr, 16);
}

/* 0 on success; -1 when the frame is too short for its own headers, or its
 * IPv6 extension headers are more than the walk reads (skip_ext_headers). */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(p->smac, eth->h_source, 6);
	__builtin_memcpy(p->dmac, eth->h_dest, 6);
	p->ethertype = bpf_ntohs(eth->h_proto);
	if (p->ethertype == ETH_P_IP) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return -1;
		p->family = 4;
		p->proto = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		__builtin_memcpy(p->osrc, p->saddr, 16);
		p->l4off = sizeof(*eth) + (ip->ihl & 0xf) * 4;
		if (ip->frag_off & bpf_htons(0x3fff)) {   /* more fragments, or an offset */
			p->frag = ip->frag_off & bpf_htons(0x1fff) ? FRAG_LATER : FRAG_FIRST;
			p->frag_proto = ip->protocol;
			p->frag_id = bpf_ntohs(ip->id);
		}
	} else if (p->ethertype == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		p->family = 6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		__builtin_memcpy(p->osrc, p->saddr, 16);
		p->l4off = sizeof(*eth) + sizeof(*ip6);
		if (skip_ext_headers(skb, p) < 0)
			return -1;
	} else {
		if (p->ethertype == ETH_P_ARP_)
			parse_arp(skb, p);
		return 0;
	}
	if (p->frag == FRAG_LATER)
		return 0;   /* no L4 header: lib/frag.h gives it its first fragment's */
	parse_l4(skb, p);
	return 0;
}

#endif
