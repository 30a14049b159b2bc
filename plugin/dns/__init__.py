"""DNS-name egress rules at run time: learn addresses from DNS answers in flight.

Contract: "DNS-name destinations". A rule ``web->dns(api.example.com):tcp/443``
compiles to an :class:`~segmentation.policymap.FqdnEntry`; the addresses come
from the DNS answers that reach containers of ``web`` on their way through
the network -- from Docker's embedded resolver forwarding upstream (its
query leaves the container's namespace, so the answer comes back through
secnet's bridge) or from a server the container asks directly.

How (Cilium's pkg/fqdn idea on netfilter):

1. answers (UDP and TCP source port 53, replies) bound for a container whose
   segment has a DNS rule are marked and sent to an NFQUEUE (``plugin.enforce.nftables.dnsmarks``),
   read by ``queue.py``;
2. the daemon parses each with dnspython (``answers.py``), follows the CNAME
   chain and matches every name on it against the DNS rules of the
   destination container's segment (``segmentation.fqdn``);
3. it records what it learned, bounded (``store.py``), and asks the
   datapath to allow (segment identity, address, protocol, ports) for
   max(TTL, floor) seconds (``datapath.py``; the network's backend:
   ``plugin.enforce.nftables.fqdn``, ``plugin.enforce.ebpf.fqdn``) -- in the
   kernel the address expires on its own, conntrack keeps flows opened
   while it was allowed;
4. only then it gives the answer the verdict accept (``learner.py``): the
   container cannot connect before the rule is in force.

Fail closed: when the daemon is not reading the queue, answers are dropped
(no ``bypass``); an answer that cannot be learned (bound reached, kernel
refused) is passed on but its addresses stay denied, and that is logged.
"""
