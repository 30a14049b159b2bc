"""A look at Docker's iptables chains where iptables-nft keeps them, without a process.

Kernel background. ``iptables`` on Debian 12 (and most distributions since)
is iptables-nft: its rules live in nf_tables, in the table ``filter`` of
family ``ip`` (``ip6`` for ip6tables), one nf_tables chain per iptables
chain. A ``-m comment`` becomes an ``xt`` ``comment`` match whose 256-byte
info holds the text; ``-j CHAIN`` a ``counter`` and an ``immediate`` jump
verdict. So whether a new network's DOCKER-USER rules can simply be
inserted (the chain is there, FORWARD jumps to it, no rule carries the
network's comment) can be read over netlink in well under a millisecond,
where ``iptables -S`` costs a fork and an exec (~5 ms each from the daemon).

Only a positive answer is trusted: anything unexpected (legacy iptables,
a missing table or chain, a rule whose shape is not the plain jump) says
"not known", and the caller reads the table with ``iptables -S`` as before.
"""
from __future__ import annotations

import struct
import subprocess
import threading

from plugin.enforce.nftables.netlink import ElementWriter
from plugin.enforce.nftables.nftdump import NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, _all, _attr, _attrs

FAMILIES = {"iptables": 2, "ip6tables": 10}    # NFPROTO_IPV4, NFPROTO_IPV6
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 2, 2, 1, 2
NFT_JUMP = -3
TABLE = b"filter\0"

_variants: dict = {}
_variants_lock = threading.Lock()


def nft_based(binary: str) -> bool:
    """True when ``binary`` (iptables, ip6tables) is iptables-nft (``-V`` says
    ``nf_tables``); asked once per binary for the daemon's life."""
    with _variants_lock:
        if binary not in _variants:
            try:
                out = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stdout
            except OSError:
                out = ""
            _variants[binary] = "nf_tables" in out
        return _variants[binary]


def _name(value: bytes) -> bytes:
    return value.rstrip(b"\0")


def _plain(expressions: bytes):
    """``(code, chain)`` of a rule that is exactly ``-j VERDICT`` (a counter, then an
    immediate verdict; ``chain``: a jump's target, else b""), else None."""
    exprs = [_attrs(e) for e in _all(expressions, NFTA_LIST_ELEM)]
    rest = [e for e in exprs if _name(e.get(NFTA_EXPR_NAME, b"")) != b"counter"]
    if len(rest) != 1 or _name(rest[0].get(NFTA_EXPR_NAME, b"")) != b"immediate":
        return None
    data = _attrs(rest[0].get(NFTA_EXPR_DATA, b""))
    verdict = _attrs(_attrs(data.get(NFTA_IMMEDIATE_DATA, b"")).get(NFTA_DATA_VERDICT, b""))
    code = verdict.get(NFTA_VERDICT_CODE, b"")
    if len(code) != 4:
        return None
    return struct.unpack("!i", code)[0], _name(verdict.get(NFTA_VERDICT_CHAIN, b""))


def _plain_jump(expressions: bytes, target: bytes) -> bool:
    """True for a rule that is exactly ``-j TARGET`` (a counter, then a jump verdict)."""
    return _plain(expressions) == (NFT_JUMP, target)


NF_DROP, NF_ACCEPT = 0, 1
NFT_RETURN = -5        # include/uapi/linux/netfilter/nf_tables.h, enum nft_verdicts
_CODES = {"DROP": NF_DROP, "ACCEPT": NF_ACCEPT, "JUMP": NFT_JUMP}


def _verdict(expressions: bytes):
    """The verdict code of a rule ending in a plain verdict (``-j ACCEPT``/``DROP``), else None."""
    exprs = [_attrs(e) for e in _all(expressions, NFTA_LIST_ELEM)]
    if not exprs or _name(exprs[-1].get(NFTA_EXPR_NAME, b"")) != b"immediate":
        return None
    data = _attrs(exprs[-1].get(NFTA_EXPR_DATA, b""))
    code = _attrs(_attrs(data.get(NFTA_IMMEDIATE_DATA, b"")).get(NFTA_DATA_VERDICT, b"")).get(NFTA_VERDICT_CODE, b"")
    return struct.unpack("!i", code)[0] if len(code) == 4 else None


def _filter_rules(binary: str, chain: bytes):
    """(chain names as str, rules) of ``binary``'s filter table over netlink; None when not
    known (not iptables-nft, no such table, a netlink error)."""
    family = FAMILIES.get(binary)
    if family is None or not nft_based(binary):
        return None
    reader = ElementWriter()   # a socket of its own, in the calling thread's namespace
    try:
        chains = {_name(a.get(NFTA_CHAIN_NAME, b"")).decode() for a in
                  reader._dump_messages(NFT_MSG_GETCHAIN, family, b"") if a.get(NFTA_CHAIN_TABLE) == TABLE}
        if chain.decode() not in chains or "FORWARD" not in chains:
            return None
        return chains, [a for a in reader._dump_messages(NFT_MSG_GETRULE, family, _attr(NFTA_RULE_TABLE, TABLE))
                        if a.get(NFTA_RULE_TABLE) == TABLE]
    except OSError:
        return None
    finally:
        reader.close()


def _jumps(rules: list, target: bytes) -> bool:
    return any(_name(a.get(NFTA_RULE_CHAIN, b"")) == b"FORWARD"
               and _plain_jump(a.get(NFTA_RULE_EXPRESSIONS, b""), target) for a in rules)


def _tagged(rules: list, chain: bytes, needle: bytes) -> list:
    return [a for a in rules if _name(a.get(NFTA_RULE_CHAIN, b"")) == chain
            and needle in a.get(NFTA_RULE_EXPRESSIONS, b"") + a.get(NFTA_RULE_USERDATA, b"")]


def intact(binary: str, chain: str, tags, verdicts, prefix: str = "") -> bool:
    """True when ``binary``'s rules are iptables-nft's and, in its filter table, chain
    ``chain`` exists, FORWARD has the rule ``-j chain``, for each text of ``tags``
    (networks' comments) ``chain`` holds exactly the rules carrying it that
    ``verdicts(chain names)`` counts (``{"ACCEPT"|"DROP"|"JUMP": n}``, by the verdict
    they end in), and no other, and (with ``prefix``, the text every tag starts with) no
    rule without ``prefix`` sits between the first tagged rule and the chain's first
    plain ``-j RETURN`` (an admin's rule that ours would run ahead of). Then a repair
    that re-ensures those networks' rules has nothing to write: it need not read the
    table with ``iptables -S`` (two processes). False when any of it is not so, or not
    known."""
    found = _filter_rules(binary, chain.encode())
    if found is None or not _jumps(found[1], chain.encode()):
        return False
    if prefix and _foreign_below(found[1], chain.encode(), [t.encode() for t in tags], prefix.encode()):
        return False
    counts = verdicts(found[0])
    wanted = sorted(_CODES[name] for name, count in counts.items() for _ in range(count))
    for tag in tags:
        have = sorted(_verdict(a.get(NFTA_RULE_EXPRESSIONS, b"")) for a in
                      _tagged(found[1], chain.encode(), tag.encode()))
        if have != wanted:
            return False
    return True


def _foreign_below(rules: list, chain: bytes, tags: list, prefix: bytes) -> bool:
    """Whether a rule of ``chain`` without ``prefix`` comes after its first rule carrying one
    of ``tags`` and before its first plain RETURN."""
    seen = False
    for a in rules:
        if _name(a.get(NFTA_RULE_CHAIN, b"")) != chain:
            continue
        text = a.get(NFTA_RULE_EXPRESSIONS, b"") + a.get(NFTA_RULE_USERDATA, b"")
        if not seen:
            seen = any(tag in text for tag in tags)
        elif _plain(a.get(NFTA_RULE_EXPRESSIONS, b"")) == (NFT_RETURN, b""):
            return False
        elif prefix not in text:
            return True
    return False


def chain_tail(binary: str, chain: str, tag: str):
    """When ``binary``'s rules are iptables-nft's and, in its filter table, chain ``chain``
    exists, FORWARD has the rule ``-j chain``, and no rule of ``chain`` carries the text
    ``tag`` (a network's comment) -- so that network's rules can be inserted without
    reading the table: ``(at, chains)``, the 1-based position in ``chain`` of its first
    plain ``-j RETURN`` (Docker ends DOCKER-USER with one), 0 when it has none, and the
    names of the filter table's chains. Rules inserted at ``at`` come after every rule
    above it (the admin's own among them) and still run. None when any of it is not so,
    or not known (legacy iptables, no table yet, a netlink error)."""
    found = _filter_rules(binary, chain.encode())
    if found is None or not _jumps(found[1], chain.encode()) or _tagged(found[1], chain.encode(), tag.encode()):
        return None
    rules = [a for a in found[1] if _name(a.get(NFTA_RULE_CHAIN, b"")) == chain.encode()]
    at = next((i for i, a in enumerate(rules, 1) if _plain(a.get(NFTA_RULE_EXPRESSIONS, b"")) == (NFT_RETURN, b"")), 0)
    return at, found[0]
