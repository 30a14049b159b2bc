/* One packet's context: the network's state and the settings of its version
 * in force (read once per packet), and the per-CPU scratch space its parsed
 * packet lives in (lib/maps.h: scratch). */
#ifndef SECNET_CONTEXT_H
#define SECNET_CONTEXT_H
#include "common.h"
#include "maps.h"
#include "parse.h"

struct ctx {
	struct state *st;
	struct settings *s;
	__u8 ver;
	__u8 learned;            /* judge_new admitted the flow by a learned DNS address */
};

static __always_inline struct pkt *fresh_pkt(void)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);

	if (!sc)
		return NULL;
	__builtin_memset(&sc->p, 0, sizeof(sc->p));
	return &sc->p;
}

static __always_inline int load_ctx(struct ctx *c)
{
	__u32 zero = 0, ver;

	c->st = bpf_map_lookup_elem(&state, &zero);
	if (!c->st)
		return -1;
	ver = c->st->version & 1;
	c->ver = ver;
	c->s = bpf_map_lookup_elem(&settings, &ver);
	return c->s ? 0 : -1;
}

#endif
