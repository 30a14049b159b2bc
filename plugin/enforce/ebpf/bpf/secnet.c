/* secnet's eBPF datapath: two tc (clsact, direct-action) programs on the
 * host side of each container's veth.
 *
 *   from_container  tc ingress: what the container sends. Anti-spoofing,
 *                   pending/quarantine, then every flow is judged here:
 *                   east-west (to another member) and egress (to the outside).
 *                   Allowed east-west packets go straight to the peer veth
 *                   (bpf_redirect_peer), past the bridge and netfilter.
 *   to_container    tc egress: what reaches the container. Pending and
 *                   quarantined containers receive nothing; flows from the
 *                   outside (published ports, the host, CIDR sources) are
 *                   judged here; east-west was judged at the source.
 *
 * Both consult the maps of one network (lib/maps.h), pinned per network.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/drop.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/spoof.h"
#include "lib/nat.h"
#include "lib/fastpath.h"
#include "lib/context.h"
#include "lib/lookup.h"
#include "lib/inactive.h"
#include "lib/frag.h"
#include "lib/flood.h"

#define PACKET_HOST_ 0

/* the layouts maps.py packs */
_Static_assert(sizeof(struct endpoint) == 48, "endpoint");
_Static_assert(sizeof(struct addr_key) == 20, "addr_key");
_Static_assert(sizeof(struct member) == 8, "member");
_Static_assert(sizeof(struct state) == 16, "state");
_Static_assert(sizeof(struct settings) == 4, "settings");
_Static_assert(sizeof(struct policy_key) == 12, "policy_key");
_Static_assert(sizeof(struct policy_val) == 8, "policy_val");
_Static_assert(sizeof(struct restricted_key) == 4, "restricted_key");
_Static_assert(sizeof(struct cidr_key) == 28, "cidr_key");
_Static_assert(sizeof(struct cidr_val) == 388, "cidr_val");
_Static_assert(sizeof(struct count_key) == 32, "count_key");
_Static_assert(sizeof(struct drop_key) == 8, "drop_key");
_Static_assert(sizeof(struct ct_key) == 40, "ct_key");
_Static_assert(sizeof(struct ct_val) == 48, "ct_val");
_Static_assert(sizeof(struct drop_event) == 80, "drop_event");
_Static_assert(sizeof(struct pub_key) == 20, "pub_key");
_Static_assert(sizeof(struct pub_val) == 8, "pub_val");
_Static_assert(sizeof(struct subnet_key) == 24, "subnet_key");
_Static_assert(sizeof(struct fqdn_key) == 28, "fqdn_key");
_Static_assert(sizeof(struct fqdn_val) == 144, "fqdn_val");

char LICENSE[] SEC("license") = "GPL";

static __always_inline int loopback(struct pkt *p)
{
	if (p->family == 4)
		return p->daddr[0] == 127;
	return ((__u64 *)p->daddr)[0] == 0 && ((__u64 *)p->daddr)[1] == bpf_cpu_to_be64(1);
}

/* The source a flow from outside is judged by (``o->osrc``): the original
 * source of a NAT'd flow; all zero when it was masqueraded from a source the
 * kernel cannot tell (not TCP/UDP: only a 0.0.0.0/0 or ::/0 rule matches).
 * Returns its kind as judged when it opened (``from``: it was forwarded). */
static __always_inline __u8 inbound_kind(struct __sk_buff *skb, struct pkt *o, int from, __u16 src)
{
	int nat = kernel_nat(skb, o, o->osrc);

	if (!from)
		return KIND_IN_HOST;
	if (nat & NAT_DST)
		return identity_of(o, o->osrc) == ID_OUTSIDE ? KIND_IN_DNAT : KIND_IN_HAIRPIN;
	if (!nat && src == ID_HOST)
		__builtin_memset(o->osrc, 0, 16);   /* a forwarded packet from the host's address: masqueraded */
	return KIND_IN;
}

/* Judge the flow of a tracked packet again under the current generation. */
static __always_inline int rejudge(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				   struct ct_val *v)
{
	struct count_key ck = {};
	struct verdict vd = {};
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	struct pkt *o;
	__u8 reason = R_NO_RULE, kind = v->kind;
	__u16 port;
	int ok;

	if (!sc)
		return TC_ACT_SHOT;
	o = &sc->o;
	ct_original(p, v, o);
	vd.src = identity_of(o, o->saddr);
	vd.dst = identity_of(o, o->daddr);
	port = flow_port(o);
	if (member_identity(vd.src) && member_identity(vd.dst))
		kind = KIND_EW;    /* member to member, whatever its ends were when it opened */
	if (kind == KIND_HAIRPIN) {
		struct pub_val *pv = hairpin_of(skb, o, vd.dst);
		vd.dst = pv ? pv->identity : ID_OUTSIDE;
		port = pv ? pv->port : 0;
	} else if (kind == KIND_IN || kind == KIND_IN_DNAT || kind == KIND_IN_HOST) {
		inbound_kind(skb, o, kind != KIND_IN_HOST, vd.src);   /* its o->osrc */
		vd.src = kind == KIND_IN_HOST ? ID_HOST : ID_OUTSIDE;
	}
	if (!active_identity(vd.src)) {
		ok = 0;   /* opened by a pending or quarantined container (audit mode) */
		reason = inactive_reason(vd.src);
	} else if ((kind != KIND_EGRESS && vd.dst == ID_OUTSIDE)
	    || ((kind <= KIND_EGRESS || kind == KIND_HAIRPIN) && vd.src == ID_OUTSIDE)) {
		ok = 0;   /* a member of the flow has gone */
		reason = R_NOT_MEMBER;
	} else {
		ok = judge(o, kind, vd.src, vd.dst, port, c->ver, c->s, &ck, &reason);
		/* opened while its address was learned: it goes on after the answer
		 * expired, as long as a dns(...) rule of its segment names its service */
		if (!ok && kind == KIND_EGRESS && reason == R_EGRESS && (v->flags & CT_FQDN))
			ok = fqdn_rule_kept(c->ver, vd.src, o, port);
	}
	v->generation = c->st->generation;
	v->kind = kind;
	if (ok) {
		v->flags &= ~CT_DENIED;
		return TC_ACT_OK;
	}
	vd.reason = reason;
	if (c->s->mode == MODE_AUDIT && !always_drop(reason)) {
		v->flags |= CT_DENIED;
		return deny(skb, o, &vd, c->s->mode);
	}
	ct_forget(o);
	return deny(skb, o, &vd, c->s->mode);
}

/* A tracked packet: TC_ACT_OK / TC_ACT_SHOT; -1: not tracked. ``ew``: set to 1
 * when it passes as east-west (only that may take the fast path). */
static __always_inline int tracked(struct __sk_buff *skb, struct ctx *c, struct pkt *p, int *ew)
{
	struct ct_val *v = ct_lookup(p);
	int r = TC_ACT_OK;

	if (v) {
		if (v->generation != c->st->generation)
			r = rejudge(skb, c, p, v);
		*ew = r == TC_ACT_OK && v->kind == KIND_EW;
		return r;
	}
	if (ct_related(p, c->s->mode))
		return TC_ACT_OK;
	return -1;
}

/* Past the bridge: straight into the destination container, when it is a
 * member in force and the frame is addressed to it. The flow's entry (this
 * direction) remembers sender and destination for the fast path, under
 * this generation (``ep``: the sender, its anti-spoofing passed). */
static __always_inline int deliver(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				   struct endpoint *ep)
{
	struct member *m = member_of(p, p->daddr);
	struct endpoint *dst;
	struct ct_val *v;
	__u32 ifindex;

	if (!m || !active_identity(m->identity) || !m->ifindex)
		return TC_ACT_OK;
	if (dns_flow(p->proto, p->sport, p->dport))
		return TC_ACT_OK;   /* through the bridge: its answers are held and learned */
	ifindex = m->ifindex;
	dst = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!dst || !active_identity(dst->identity) || !eq_mac(p->dmac, dst->mac))
		return TC_ACT_OK;
	v = ct_tracked(p) ? ct_entry(p) : NULL;
	if (v && v->fast_generation != c->st->generation) {
		v->src_ifindex = skb->ifindex;
		v->peer_ifindex = ifindex;
		__builtin_memcpy(v->src_mac, ep->mac, 6);
		__builtin_memcpy(v->peer_mac, dst->mac, 6);
		v->fast_generation = c->st->generation;
	}
	/* as a veth's namespace crossing (bpf_redirect_peer keeps the mark): the
	 * marks are the host netfilter's, not the container's (docs/ebpf.md) */
	skb->mark = 0;
	bpf_skb_change_type(skb, PACKET_HOST_);
	return bpf_redirect_peer(ifindex, 0);
}

static __always_inline int judge_new(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				     __u8 kind, __u16 src, __u16 dst, __u16 port)
{
	struct count_key ck = {};
	struct verdict vd = { .src = src, .dst = dst };
	int verdict;

	if (judge(p, kind, src, dst, port, c->ver, c->s, &ck, &vd.reason)) {
		if (ck.kind)
			count_allowed(&ck, l3_len(skb));
		c->learned = vd.reason == R_LEARNED;
		ct_create(p, kind, vd.reason == R_LEARNED ? CT_FQDN : 0, c->st->generation);
		return TC_ACT_OK;
	}
	if (c->s->mode == MODE_AUDIT && kind != KIND_EGRESS && !active_identity(dst)) {
		/* to a pending or quarantined container: its port counts every packet of the
		 * flow (inactive()), this one too, as (outside, its identity) as nftables'
		 * inactive_judged does; reported here, once (U14-F1) */
		report(skb, p, &vd, 1);
		verdict = TC_ACT_OK;
	} else {
		verdict = deny(skb, p, &vd, c->s->mode);
	}
	if (verdict == TC_ACT_OK)
		ct_create(p, kind, CT_DENIED, c->st->generation);
	return verdict;
}

/* A new flow from a member (``src``: its identity in the members map) */
static __always_inline int judge_sent(struct __sk_buff *skb, struct ctx *c, struct pkt *p, __u16 src)
{
	struct verdict vd = { .src = src, .dst = ID_OUTSIDE, .reason = R_NOT_MEMBER };
	__u16 dst = identity_of(p, p->daddr);
	struct pub_val *pv;

	if (src == ID_OUTSIDE || src == ID_HOST)
		return deny(skb, p, &vd, MODE_ENFORCE);   /* its address is no member's (any more) */
	if (!active_identity(src)) {
		vd.reason = inactive_reason(src);
		return deny(skb, p, &vd, c->s->mode);
	}
	if (member_identity(dst))
		return judge_new(skb, c, p, KIND_EW, src, dst, flow_port(p));
	/* a unicast frame for an address of the network that no member has: nobody's */
	if (dst == ID_OUTSIDE && !(p->dmac[0] & 1) && in_subnets(p, p->daddr))
		return deny(skb, p, &vd, MODE_ENFORCE);
	pv = hairpin_of(skb, p, dst);   /* a published port of this network: east-west */
	if (pv)
		return judge_new(skb, c, p, KIND_HAIRPIN, src, pv->identity, pv->port);
	return judge_new(skb, c, p, KIND_EGRESS, src, dst, flow_port(p));
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct verdict vd = { .dst = ID_OUTSIDE };
	struct endpoint *ep;
	struct pkt *p;
	struct ctx c;
	int r, ew = 0;
	__u16 src;

	r = fast_path(skb);   /* lib/fastpath.h: judged east-west, straight across */
	if (r != FAST_NO)
		return r;
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	p = fresh_pkt();
	if (!p)
		return TC_ACT_SHOT;
	/* fail closed: unparsable, no endpoint, a fragment whose first one is unknown */
	if (load_ctx(&c) || parse(skb, p) < 0 || !ep || frag_later(p) < 0) {
		vd.reason = ep ? R_INVALID : R_PENDING;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	vd.src = ep->identity;
	if (!active_identity(ep->identity) && c.s->mode == MODE_ENFORCE) {
		vd.reason = inactive_reason(ep->identity);
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	r = check_source(skb, p, ep);
	if (r < 0) {
		vd.reason = -r;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	frag_remember(p);
	/* what passes from here on, Docker's DOCKER-USER lets through (plugin/enforce/hostfw/dockerfw.py) */
	skb->mark |= PASSED_MARK;
	if (!active_identity(ep->identity)) {
		vd.dst = target_identity(p);
		vd.reason = inactive_reason(ep->identity);   /* audit: passes */
		if (audit_leaves_internal(&c, p, vd.dst)) {
			vd.reason = R_INTERNAL;
			return deny(skb, p, &vd, MODE_ENFORCE);
		}
		return inactive(skb, &c, p, &vd, member_identity(vd.dst) ? KIND_EW : KIND_EGRESS, SEEN_BRIDGED);
	}
	/* (check_source's SRC_PASS of ND/MLD from a link-local or unspecified source
	 * holds on the link only: passes_unjudged; routed, it is judged) */
	if ((r == SRC_PASS && !p->family) || passes_unjudged(p))
		return TC_ACT_OK;
	if (loopback(p)) {
		/* the bridge has route_localnet (published loopback ports): the host's
		 * loopback-only services must stay the host's, in both modes */
		vd.reason = R_LOOPBACK;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	r = tracked(skb, &c, p, &ew);
	if (r >= 0)
		return (r == TC_ACT_OK && ew) ? deliver(skb, &c, p, ep) : r;
	if (!ct_opens(p, c.s->strict_tcp)) {   /* no flow's first packet: nftables' "ct state invalid" */
		vd.dst = identity_of(p, p->daddr);
		vd.reason = R_INVALID;
		invalid_to_inactive(skb, &c, vd.dst);
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	c.learned = 0;
	src = identity_of(p, p->saddr);
	r = judge_sent(skb, &c, p, src);
	if (r != TC_ACT_OK && (p->dmac[0] & 1) && member_identity(src) && active_identity(src)) {
		asm volatile("" : "+r"(skb));    /* (as below: no spilled &skb->mark) */
		skb->mark |= HOST_DENIED_MARK;   /* denied for the host's copy alone */
		return TC_ACT_OK;
	}
	if (c.learned) {
		/* (the barrier: the verifier refuses a spilled &skb->mark, ctx + 8) */
		asm volatile("" : "+r"(skb));
		skb->mark |= LEARNED_MARK;   /* the NAT-only table puts it in the ct mark */
	}
	return r == TC_ACT_OK ? deliver(skb, &c, p, ep) : r;
}

/* East-west that came through the bridge (the fast path did not take it).
 * It was judged at the source; what passes here is a frame for one of this
 * container's own addresses (its link-local one too) of a flow tracked as
 * east-west. A flow its source judged otherwise (its destination was no
 * member then) is judged again. */
static __always_inline int from_member(struct __sk_buff *skb, struct ctx *c, struct pkt *p,
				       struct endpoint *ep, __u16 src)
{
	struct verdict vd = { .src = src, .dst = ep->identity, .reason = R_NOT_MEMBER };
	int mine = p->family == 4 ? eq4(p->daddr, ep->ipv4)
				  : (eq16(p->daddr, ep->ipv6) || eq16(p->daddr, ep->ll6));
	struct ct_val *v;

	if (!mine) {
		if (!(p->dmac[0] & 1) && !eq_mac(p->dmac, ep->mac))
			return TC_ACT_SHOT;   /* the bridge's flood of a frame for another port */
		return deny(skb, p, &vd, MODE_ENFORCE);   /* routed (group copies: group_copy) */
	}
	v = ct_lookup(p);
	if (v) {
		if (v->kind != KIND_EW || v->generation != c->st->generation)
			return rejudge(skb, c, p, v);
		return TC_ACT_OK;
	}
	if (ct_related(p, c->s->mode))
		return TC_ACT_OK;
	if (!ct_opens(p, c->s->strict_tcp)) {
		vd.reason = R_INVALID;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	return judge_new(skb, c, p, KIND_EW, src, ep->identity, flow_port(p));
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, from = skb->ingress_ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&endpoints, &ifindex), *sender;
	struct verdict vd = { .src = ID_OUTSIDE };
	struct pkt *p = fresh_pkt();
	struct member *m;
	struct ctx c;
	__u16 src;
	__u8 kind;
	int r, ew = 0;

	if (!p)
		return TC_ACT_SHOT;
	if (load_ctx(&c) || parse(skb, p) < 0 || !ep || frag_later(p) < 0) {
		vd.reason = ep ? R_INVALID : R_PENDING;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	frag_remember(p);
	vd.dst = ep->identity;
	if (!active_identity(ep->identity)) {
		if (!meant_for(skb, p, ep))   /* a flooded copy for others: no report; */
			/* audit mode passes a group copy, never a unicast one for another MAC */
			return c.s->mode == MODE_AUDIT && (p->dmac[0] & 1) ? TC_ACT_OK : TC_ACT_SHOT;
		vd.reason = inactive_reason(ep->identity);
		sender = from ? bpf_map_lookup_elem(&endpoints, &from) : NULL;
		if (!sender && audit_leaves_internal(&c, p, from ? ID_OUTSIDE : ID_HOST)) {
			vd.src = from ? ID_OUTSIDE : ID_HOST;
			vd.reason = R_INTERNAL;
			return deny(skb, p, &vd, MODE_ENFORCE);
		}
		return inactive(skb, &c, p, &vd, KIND_IN, !from ? SEEN_HOST : sender ? SEEN_BRIDGED : SEEN_ROUTED);
	}
	/* The bridge floods a unicast frame whose MAC it has not learned (a new
	 * container that has not sent yet) to every port: such a copy is for
	 * another container. Judged here, it would be judged against *this*
	 * container's segment, and the flow's entry (keyed by addresses, shared
	 * by the network) would then let it into its real destination. */
	if (!(p->dmac[0] & 1) && !eq_mac(p->dmac, ep->mac))
		return TC_ACT_SHOT;
	sender = from ? bpf_map_lookup_elem(&endpoints, &from) : NULL;
	/* on the link only (U17-F1, U17-F4): the host's own or a member's through the
	 * bridge, not routed in (those are judged, as nftables' forward chain does);
	 * a member's IGMP to a group is for the host: group_copy drops it */
	if (!p->family || (passes_unjudged(p) && (!from || sender) && !(sender && p->family == 4)))
		return TC_ACT_OK;
	if (sender && !active_identity(sender->identity))   /* judged, reported at its source */
		return c.s->mode == MODE_AUDIT ? TC_ACT_OK : TC_ACT_SHOT;
	if (sender && (p->dmac[0] & 1))
		return group_copy(skb, &c, p, sender->identity, ep->identity);
	src = identity_of(p, p->saddr);
	if (sender && member_identity(src))
		return from_member(skb, &c, p, ep, src);
	m = member_of(p, p->daddr);
	if (m && m->ifindex != ifindex && member_identity(m->identity))
		return TC_ACT_SHOT;   /* another member's address: not this container's to judge */
	r = tracked(skb, &c, p, &ew);
	if (r >= 0)
		return r;
	/* from outside the network: the host, published ports, other networks */
	kind = inbound_kind(skb, p, from != 0, src);
	if (kind != KIND_IN_HOST && !ct_opens(p, c.s->strict_tcp)) {   /* (nft's host_out has no invalid rule) */
		vd.reason = R_INVALID;
		return deny(skb, p, &vd, MODE_ENFORCE);
	}
	return judge_new(skb, &c, p, kind, kind == KIND_IN_HOST ? ID_HOST : ID_OUTSIDE, ep->identity,
			 flow_port(p));
}
