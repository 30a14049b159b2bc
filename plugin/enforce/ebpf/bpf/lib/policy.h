/* Judging a new flow: the policy map (east-west), the CIDR map (north-south)
 * and the network's settings, exactly as the nftables backend's chains do:
 *
 *   member -> member   an entry (src, dst, l4, port) allows it, else no-rule;
 *   member -> outside  internal: drop; a CIDR egress entry allows it; then an
 *                      address a DNS answer taught the segment (fqdn map, until
 *                      its expiry); else the egress default (deny: "egress");
 *   outside -> member  internal: drop; a segment that some CIDR-source rule
 *                      names admits only what those rules allow; any other
 *                      segment admits DNAT'd flows (published ports) and the
 *                      host itself, as Docker's bridge does, and nothing else.
 *   member -> a published port of its network (hairpin): member -> member,
 *                      to the member behind the port, on its container port.
 */
#ifndef SECNET_POLICY_H
#define SECNET_POLICY_H
#include "common.h"
#include "maps.h"
#include "parse.h"

static __always_inline int active_identity(__u16 id)
{
	return id != ID_PENDING && id != ID_QUARANTINED;
}

static __always_inline __u8 inactive_reason(__u16 id)
{
	return id == ID_QUARANTINED ? R_QUARANTINED : R_PENDING;
}

static __always_inline __u16 flow_port(struct pkt *p)
{
	return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) ? p->dport : 0;
}

/* A DNS flow: TCP or UDP with either end on port 53 (ports in host order).
 * East-west it never takes bpf_redirect_peer (deliver(), the fast path) but
 * the bridge, so that the host's netfilter sees the query and its answer: the
 * table secnet-dns marks an answer (a conntrack reply from port 53) to a
 * container whose segment has DNS rules and iptables' NFQUEUE holds it until
 * the daemon has learned it (plugin/enforce/nftables/dnsmarks.py; no reader:
 * dropped). Redirected, an answer from a resolver container of the same
 * network reached the querier unseen and taught nothing (U11-F4). */
static __always_inline int dns_flow(__u8 proto, __u16 sport, __u16 dport)
{
	return (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && (sport == 53 || dport == 53);
}

static __always_inline void count_allowed(struct count_key *k, __u32 len)
{
	count_add(&allowed, k, len);
}

static __always_inline int ew_lookup(__u8 ver, __u16 src, __u16 dst, struct pkt *p, __u16 port,
				     struct count_key *ck)
{
	struct policy_key k = { .prefixlen = 64 };
	struct policy_val *v;

	k.data[0] = ver;
	k.data[1] = src >> 8;
	k.data[2] = src & 0xff;
	k.data[3] = dst >> 8;
	k.data[4] = dst & 0xff;
	k.data[5] = p->l4;
	k.data[6] = port >> 8;
	k.data[7] = port & 0xff;
	v = bpf_map_lookup_elem(&policy, &k);
	if (!v)
		return 0;
	ck->kind = CK_POLICY;
	ck->src = src;
	ck->dst = dst;
	ck->proto = v->proto;
	ck->lo = v->lo;
	ck->hi = v->hi;
	return 1;
}

/* ``addr``: the outside address (source for ingress, destination for egress) */
static __always_inline int cidr_lookup(__u8 ver, __u8 dir, __u16 id, struct pkt *p, __u8 *addr,
				       __u16 port, struct count_key *ck)
{
	struct cidr_key k = {};
	struct cidr_val *v;

	k.prefixlen = CIDR_FIXED_BITS + (p->family == 4 ? 32 : 128);
	k.data[0] = ver;
	k.data[1] = dir;
	k.data[2] = id >> 8;
	k.data[3] = id & 0xff;
	k.data[4] = p->family;
	__builtin_memcpy(&k.data[5], addr, 16);
	v = bpf_map_lookup_elem(&cidrs, &k);
	if (!v)
		return 0;
	for (int i = 0; i < CIDR_SLOTS; i++) {
		struct cidr_svc *s = &v->svc[i];
		if (i >= v->count)
			break;
		if (s->proto && (s->proto != p->l4 || port < s->lo || port > s->hi))
			continue;
		ck->kind = CK_CIDR;
		ck->direction = dir;
		ck->proto = s->proto;
		ck->family = p->family;
		ck->src = id;
		ck->lo = s->lo;
		ck->hi = s->hi;
		ck->plen = s->plen;
		__builtin_memcpy(ck->addr, s->addr, 16);
		return 1;
	}
	return 0;
}

/* in force: ``ck`` names the grant's service and tag (the dns(...) rules' counter key) */
static __always_inline int fqdn_valid(struct fqdn_key *k, __u32 plen, __u64 now,
				      struct count_key *ck)
{
	struct fqdn_val *v;

	k->prefixlen = plen;
	v = bpf_map_lookup_elem(&fqdn, k);
	if (!v || v->expires <= now)
		return 0;
	ck->kind = CK_FQDN;
	ck->src = (k->data[0] << 8) | k->data[1];
	ck->proto = v->l4;
	ck->lo = v->lo;
	ck->hi = v->hi;
	ck->dst = v->tag;
	return 1;
}

/* a learned address: the longest prefix for the flow's port, its protocol, any
 * (an expired longer prefix must not hide a shorter one still in force) */
static __always_inline int fqdn_lookup(__u16 id, struct pkt *p, __u16 port, struct count_key *ck)
{
	struct fqdn_key k = {};
	__u64 now = bpf_ktime_get_boot_ns();

	k.data[0] = id >> 8;
	k.data[1] = id & 0xff;
	k.data[2] = p->family;
	__builtin_memcpy(&k.data[3], p->daddr, 16);
	k.data[19] = p->l4;
	k.data[20] = port >> 8;
	k.data[21] = port & 0xff;
	return fqdn_valid(&k, FQDN_FULL_BITS, now, ck) || fqdn_valid(&k, FQDN_L4_BITS, now, ck) ||
	       fqdn_valid(&k, FQDN_ANY_BITS, now, ck);
}

/* A flow opened to a learned address (CT_FQDN) whose address has expired: does a
 * dns(...) rule of segment ``src`` still name its service? (DIR_FQDN entries) */
static __always_inline int fqdn_rule_kept(__u8 ver, __u16 src, struct pkt *p, __u16 port)
{
	struct count_key ck = {};

	return cidr_lookup(ver, DIR_FQDN, src, p, p->daddr, port, &ck);
}

static __always_inline int restricted_id(__u8 ver, __u16 id)
{
	struct restricted_key k = { .version = ver, .identity = id };

	return bpf_map_lookup_elem(&restricted, &k) != NULL;
}

/* 1: allowed (``ck`` says by what: an entry, a CIDR, with ``*reason`` R_LEARNED a
 * learned DNS address; ck->kind 0: a default); 0: denied, ``*reason`` why.
 * ``kind``: KIND_*; ``src``/``dst``: identities (ID_OUTSIDE/ID_HOST for the outside);
 * ``port``: the destination port the policy speaks of (a hairpin: the container's). */
static __always_inline int judge(struct pkt *p, __u8 kind, __u16 src, __u16 dst, __u16 port,
				 __u8 ver, struct settings *s, struct count_key *ck, __u8 *reason)
{
	if (kind != KIND_EGRESS && !active_identity(dst)) {
		*reason = inactive_reason(dst);
		return 0;
	}
	*reason = R_NO_RULE;
	/* a hairpin (a member to a published port of this network) is east-west
	 * to the member behind the port, on its container port (``port``) */
	if (kind == KIND_EW || kind == KIND_HAIRPIN)
		return ew_lookup(ver, src, dst, p, port, ck);
	if (kind == KIND_IN_HAIRPIN)
		return 1;   /* judged at the sender (KIND_HAIRPIN) */
	if (s->internal) {
		*reason = R_INTERNAL;
		return 0;
	}
	if (kind == KIND_EGRESS) {
		if (cidr_lookup(ver, DIR_EGRESS, src, p, p->daddr, port, ck))
			return 1;
		if (fqdn_lookup(src, p, port, ck)) {
			*reason = R_LEARNED;
			return 1;
		}
		*reason = R_EGRESS;
		return s->egress_allow;
	}
	*reason = R_NO_RULE;
	if (restricted_id(ver, dst))
		return cidr_lookup(ver, DIR_INGRESS, dst, p, p->osrc, port, ck);
	return kind == KIND_IN_DNAT || kind == KIND_IN_HOST;
}

#endif
