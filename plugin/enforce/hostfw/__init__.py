"""secnet's rules in the host's shared firewall, outside its own tables.

Docker's forward chains decide before secnet's tables whether a bridge may
forward at all; these modules make them let secnet's traffic through, and keep
it so while others rewrite them: ``dockerfw`` (rules in Docker's iptables
chains, DOCKER-USER), ``nftguard`` (secnet's stand-in for DOCKER-USER under
Docker's nftables firewall), ``iptpeek`` (reading iptables-nft's chains over
netlink, without a process), ``forward`` (the one writer of them all, which
puts them back when a change notification says they were touched).
"""
