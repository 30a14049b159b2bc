/* Was this flow DNAT'd by netfilter (a published port)? NAT itself stays in
 * nftables; a flow arriving at a container after DNAT is judged like the
 * nftables backend's "ct status dnat": asked of the kernel's conntrack with
 * the bpf_skb_ct_lookup kfunc (tc programs: Linux 5.18). The packet is on
 * its way to the container, so its tuple reversed is the conntrack entry's
 * reply tuple. The entry's original source tells a hairpin (a member of the
 * network, masqueraded since) from a flow that came from outside. */
#ifndef SECNET_NAT_H
#define SECNET_NAT_H
#include "common.h"
#include "parse.h"

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

#define DNAT_NO      0
#define DNAT_YES     1
#define DNAT_HAIRPIN 2   /* DNAT'd, and its original source is in ``orig`` */

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

/* DNAT_NO, DNAT_YES; the original source address goes to ``orig`` (16 bytes). */
static __always_inline int dnat_flow(struct __sk_buff *skb, struct pkt *p, __u8 *orig)
{
	struct bpf_ct_opts___secnet opts = { .netns_id = -1, .l4proto = p->proto };
	struct bpf_sock_tuple t = {};
	struct nf_conn *ct;
	__u32 size;
	int dnat;

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
	dnat = (ct->status & IPS_DST_NAT) != 0;
	if (dnat) {
		__u32 a0 = ct->tuplehash[0].tuple.src.u3.all[0], a1 = ct->tuplehash[0].tuple.src.u3.all[1];
		__u32 a2 = ct->tuplehash[0].tuple.src.u3.all[2], a3 = ct->tuplehash[0].tuple.src.u3.all[3];
		__builtin_memcpy(orig, &a0, 4);
		if (p->family == 6) {
			__builtin_memcpy(orig + 4, &a1, 4);
			__builtin_memcpy(orig + 8, &a2, 4);
			__builtin_memcpy(orig + 12, &a3, 4);
		}
	}
	bpf_ct_release(ct);
	return dnat;
}

#endif
