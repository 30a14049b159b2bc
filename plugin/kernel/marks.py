"""The packet and connection mark bits secnet sets, in one place, so that no two
meanings share a bit by accident (the eBPF programs' copies:
plugin/enforce/ebpf/bpf/lib/common.h; a unit test compares them).

Packet marks (``skb->mark``, nft ``meta mark``) live as long as a packet crosses
the host; connection marks (nft ``ct mark``) as long as the flow's conntrack
entry. secnet's bits are high ones, clear of Docker's and of the 16-bit
identities the nftables backend keeps in the ct mark's low half.
"""
from __future__ import annotations

#: packet: secnet let this through (the nftables backend's chain ``pass``, the eBPF
#: ``from_container``); Docker's DOCKER-USER chain accepts it (plugin/enforce/hostfw/dockerfw.py)
PASSED_MARK = 0x00200000
#: packet: a DNS answer to hold until its addresses are learned (plugin/enforce/nftables/dnsmarks.py)
DNS_HOLD_MARK = 0x00400000
#: packet and connection: a learned DNS address admitted this flow. Conntrack pruning
#: keeps such a flow after its address expired, while a dns(...) rule of its segment that
#: learned the address is still there (``plugin.kernel.conntrack.dns_rule_by``)
LEARNED_FLOW_MARK = 0x00800000
#: connection (nftables backend): secnet's tables judged this flow and let it through;
#: only then do its later packets pass on their conntrack state (U17-F6:
#: plugin/enforce/nftables/ruleset.py)
JUDGED_FLOW_MARK = 0x01000000
#: packet (eBPF backend): a member's broadcast or multicast whose copy to the host egress
#: denies; the NAT-only table's input chain drops that copy (plugin/enforce/nftables/natonly.py).
#: The same bit as JUDGED_FLOW_MARK, which is a connection mark of the other backend
HOST_DENIED_MARK = 0x01000000
