/* Every drop goes through deny(): it counts the packet per (source
 * identity, destination identity, reason), reports the flow to user space
 * through the ring buffer at most once per flow and second, and returns the
 * verdict: TC_ACT_SHOT, or in audit mode TC_ACT_OK for what policy would
 * drop (spoofed frames, unknown ethertypes and what leaves or enters an
 * --internal network are dropped in both modes).
 * Reports are also capped per network (logcap, one bucket for all CPUs): a
 * flood of distinct flows is counted in full but reported only up to 500/s
 * after a burst of 1,000, as nftables' "limit name logcap".
 * Bytes are counted from the network header on (what nft counters count). */
#ifndef SECNET_DROP_H
#define SECNET_DROP_H
#include "common.h"
#include "maps.h"
#include "parse.h"

#define REPORT_INTERVAL_NS 1000000000ULL

struct verdict {
	__u8  reason;
	__u16 src;
	__u16 dst;
};

static __always_inline int rate_limited(struct pkt *p, __u8 reason)
{
	struct ct_key k = {};
	__u64 now = bpf_ktime_get_ns(), *last;

	if (p->family) {
		/* the source it is judged and reported by: two clients that one masquerade
		 * made the gateway are two flows, as nftables (before the NAT) keys them */
		__builtin_memcpy(k.saddr, p->osrc, 16);
		__builtin_memcpy(k.daddr, p->daddr, 16);
		k.proto = p->proto;
		/* the port for TCP and UDP only, as nftables' log4p/log4 keys
		 * (plugin/enforce/nftables/drops.py): an ICMP query's identifier is no port */
		k.dport = (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) ? p->dport : 0;
	} else {
		__builtin_memcpy(k.saddr, p->smac, 6);
		__builtin_memcpy(k.daddr, p->dmac, 6);
		k.dport = p->ethertype;
	}
	k.family = p->family;
	k.pad = reason;
	last = bpf_map_lookup_elem(&reported, &k);
	if (last && now - *last < REPORT_INTERVAL_NS)
		return 1;
	bpf_map_update_elem(&reported, &k, &now, BPF_ANY);
	return 0;
}

/* 1 when the network's report budget is spent (all CPUs share it). */
static __always_inline int over_budget(void)
{
	__u32 zero = 0;
	struct budget *b = bpf_map_lookup_elem(&logcap, &zero);
	__u64 now = bpf_ktime_get_ns(), add;
	int spent = 1;

	if (!b)
		return 1;
	bpf_spin_lock(&b->lock);
	add = (now - b->last) / REPORT_RATE_NS;
	if (add) {
		b->tokens = b->tokens + add > REPORT_BURST ? REPORT_BURST : b->tokens + add;
		b->last += add * REPORT_RATE_NS;
		if (b->tokens == REPORT_BURST)
			b->last = now;
	}
	if (b->tokens) {
		b->tokens -= 1;
		spent = 0;
	}
	bpf_spin_unlock(&b->lock);
	return spent;
}

/* The packet's length from its network header on (nft's counters' bytes). */
static __always_inline __u32 l3_len(struct __sk_buff *skb)
{
	return skb->len > ETH_HLEN ? skb->len - ETH_HLEN : 0;
}

static __always_inline void report(struct __sk_buff *skb, struct pkt *p, struct verdict *v,
				   __u8 audit)
{
	__u32 zero = 0;
	struct state *st = bpf_map_lookup_elem(&state, &zero);
	struct drop_event *e;

	if (rate_limited(p, v->reason) || over_budget())
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->tag = st ? st->tag : 0;
	e->time = bpf_ktime_get_ns();
	e->reason = v->reason;
	e->family = p->family ? p->family : (p->ethertype == ETH_P_ARP_ ? 4 : 0);
	e->proto = p->proto;
	e->audit = audit;
	e->port = (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) ? p->dport : 0;
	e->ethertype = p->ethertype;
	/* the port the packet came in on, as nft's iifname: on a container's way in
	 * (tc egress of its port) that is the sender's port, the uplink, or none (0)
	 * for the host's own packets, never the port that saw it leave */
	e->ifindex = skb->ingress_ifindex;
	e->src_id = v->src;
	e->dst_id = v->dst;
	__builtin_memcpy(e->saddr, p->osrc, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	__builtin_memcpy(e->smac, p->smac, 6);
	__builtin_memcpy(e->dmac, p->dmac, 6);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void count_drop(struct __sk_buff *skb, struct verdict *v, __u8 audit)
{
	struct drop_key k = { .src = v->src, .dst = v->dst, .reason = v->reason, .audit = audit };

	count_add(&dropped, &k, l3_len(skb));
}

/* what audit mode drops all the same (nft: the reasons not in drops.AUDITABLE):
 * --internal is Docker's network setting, not policy (U11-F1) */
static __always_inline int always_drop(__u8 reason)
{
	return reason == R_SPOOFED || reason == R_ETHERTYPE || reason == R_NOT_MEMBER
		|| reason == R_INVALID || reason == R_INTERNAL || reason == R_LOOPBACK
		|| reason == R_ROUTER;
}

/* The one way a packet is dropped. ``mode``: the network's mode now. */
static __always_inline int deny(struct __sk_buff *skb, struct pkt *p, struct verdict *v, __u8 mode)
{
	__u8 audit = mode == MODE_AUDIT && !always_drop(v->reason);

	count_drop(skb, v, audit);
	report(skb, p, v, audit);
	return audit ? TC_ACT_OK : TC_ACT_SHOT;
}

#endif
