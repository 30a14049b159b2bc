"""The one-off script that applies a policy with a secnet backend in a bench namespace.

The datapath benches (``nft_scale``, ``nft_guard``, ``ebpf_datapath``) each run it
as ``python -c`` (a process of its own: it enters the namespace for good, and may
run against another tree as its working directory).
"""
from __future__ import annotations

#: identities of the measured pair (``a``, ``b``) and of 100 other segments ``s0..s99``
_BODY = """
from plugin.kernel.netns import enter
enter({ns!r})
from plugin.enforce.backend import NetworkSpec, Port
{imports}
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules
ids = {{'a': 256, 'b': 257, **{{f's{{i}}': 300 + i for i in range(100)}}}}
extra = [f's{{i % 100}}->s{{(i * 7) % 100}}:tcp/{{1000 + i}}' for i in range({extra_rules})]
rules = ', '.join([{rules!r}] + extra)
pm = compile_policy_map(NetworkOptions(rules=parse_rules(rules), intra='deny'), ids)
ports = {ports}
b = {backend}
b.apply_network({spec}, pm, ports)
"""


def apply_script(host: str, rules: str, ports: str, spec: str, extra_rules: int = 0,
                 backend: str = "NftBackend()", imports: str = "from plugin.enforce.nftables import NftBackend",
                 close: bool = False) -> str:
    """Python source that, in namespace ``host`` (a name under /run/netns), compiles
    ``rules`` (text between segments ``a``, ``b`` and ``s0..s99``) plus ``extra_rules``
    rules ``s<i>->s<j>:tcp/<1000+i>`` with intra deny, and applies it with ``backend``
    (an expression; ``imports``: the lines it needs) as ``apply_network(spec, pm, ports)``;
    ``ports``/``spec``: expressions (a list of ``Port``, a ``NetworkSpec``); ``close``:
    call the backend's ``close`` after."""
    code = _BODY.format(ns=f"/run/netns/{host}", imports=imports, extra_rules=int(extra_rules),
                        rules=rules, ports=ports, backend=backend, spec=spec)
    return code + ("getattr(b, 'close', lambda: None)()\n" if close else "")
