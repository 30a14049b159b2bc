/* Did netfilter NAT this flow on its way in? NAT itself stays in nftables,
 * and the programs run on the veth, after it: a flow arriving at a container
 * after DNAT is judged like the nftables backend's "ct status dnat", and a
 * flow masqueraded on its way (another Docker network's egress masquerade,
 * the host's loopback-published ports) is judged by its original source, as
 * the nftables backend's forward hook sees it before postrouting. Asked of
 * the kernel's conntrack with the bpf_skb_ct_lookup kfunc (tc programs:
 * Linux 5.18; TCP and UDP only). The packet (its flow's original direction)
 * is on its way to the container, so its tuple reversed is the conntrack
 * entry's reply tuple; the entry's original tuple has the original source. */
#ifndef SECNET_NAT_H
#define SECNET_NAT_H
#include "common.h"
#include "parse.h"

#define IPS_SRC_NAT (1UL << 4)
#define IPS_DST_NAT (1UL << 5)
#define CT_OPTS_SZ 12

/* CO-RE: only the fields read here; offsets come from the kernel's BTF */
union nf_inet_addr {
	__u32 all[4];
} __attribute__((preserve_access_index));

struct nf_conntrack_man {
	union nf_inet_addr u3;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
} __attribute__((preserve_access_index));

struct nf_conn {
	unsigned long status;
	struct nf_conntrack_tuple_hash tuplehash[2];
} __attribute__((preserve_access_index));

#define NAT_DST 1     /* DNAT'd (a published port) */
#define NAT_SRC 2     /* SNAT'd (masqueraded) */

struct bpf_ct_opts___secnet {
	__s32 netns_id;
	__s32 error;
	__u8  l4proto;
	__u8  dir;
	__u8  reserved[2];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *, struct bpf_sock_tuple *, __u32,
					 struct bpf_ct_opts___secnet *, __u32) __ksym;
extern void bpf_ct_release(struct nf_conn *) __ksym;

/* NAT_DST | NAT_SRC of the kernel's entry of ``p``'s flow (``p``: its original
 * direction, towards the container), 0 when none or not NAT'd; the original
 * source address goes to ``orig`` (16 bytes) when NAT'd. */
static __always_inline int kernel_nat(struct __sk_buff *skb, struct pkt *p, __u8 *orig)
{
	struct bpf_ct_opts___secnet opts = { .netns_id = -1, .l4proto = p->proto };
	struct bpf_sock_tuple t = {};
	struct nf_conn *ct;
	__u32 size;
	int nat = 0;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	if (p->family == 4) {
		__builtin_memcpy(&t.ipv4.saddr, p->daddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->saddr, 4);
		t.ipv4.sport = bpf_htons(p->dport);
		t.ipv4.dport = bpf_htons(p->sport);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->daddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->saddr, 16);
		t.ipv6.sport = bpf_htons(p->dport);
		t.ipv6.dport = bpf_htons(p->sport);
		size = sizeof(t.ipv6);
	}
	ct = bpf_skb_ct_lookup(skb, &t, size, &opts, CT_OPTS_SZ);
	if (!ct)
		return 0;
	if (ct->status & IPS_DST_NAT)
		nat |= NAT_DST;
	if (ct->status & IPS_SRC_NAT)
		nat |= NAT_SRC;
	if (nat) {
		__u32 a0 = ct->tuplehash[0].tuple.src.u3.all[0], a1 = ct->tuplehash[0].tuple.src.u3.all[1];
		__u32 a2 = ct->tuplehash[0].tuple.src.u3.all[2], a3 = ct->tuplehash[0].tuple.src.u3.all[3];
		__builtin_memset(orig, 0, 16);
		__builtin_memcpy(orig, &a0, 4);
		if (p->family == 6) {
			__builtin_memcpy(orig + 4, &a1, 4);
			__builtin_memcpy(orig + 8, &a2, 4);
			__builtin_memcpy(orig + 12, &a3, 4);
		}
	}
	bpf_ct_release(ct);
	return nat;
}

#endif
