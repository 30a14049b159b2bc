/* The floor of any design with a tc program on the host side of a veth:
 * hand every frame to a fixed peer (bpf_redirect_peer), no lookup at all.
 * bench/ebpf_datapath.py --floor compiles it once per direction with
 * -DPEER=<ifindex of the other host-side veth> and attaches it with tc. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int redirect_floor(struct __sk_buff *skb)
{
	bpf_skb_change_type(skb, 0 /* PACKET_HOST, as the backend's fast path */);
	return bpf_redirect_peer(PEER, 0);
}
