"""`secnet show` prints the same text on both backends for the same state (contract, Backends:
"the same CLI output"). user5 finding F2: nftables printed every drop reason (zeros included)
and an all-zero `would drop` block, ebpf only the non-zero reasons."""
from __future__ import annotations

import re

import helpers as h
from vis_helpers import secnet


def _show_text(make_network, run_container, backend: str) -> str:
    net = make_network(f"sn-par-{backend}", opts={"secnet.backend": backend,
                                                   "secnet.allow": "web->api:tcp/8080"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    api = run_container(net, "api", labels={"secnet.segment": "api"})
    h.assert_not_reaches(api, web, h.LISTEN_PORT, tries=1)   # one drop: no-rule
    text = secnet("show", net.name).stdout
    text = text.replace(web.name, "WEB").replace(api.name, "API")
    text = re.sub(r"10\.\d+\.\d+\.\d+", "ADDR", text)
    text = re.sub(r"network \S+ \(bridge \S+, backend \S+,", "network X (bridge X, backend X,", text)
    return re.sub(r"(packets|bytes)\s+\d+", r"\1 N", text)


def test_show_prints_the_same_blocks_on_both_backends(make_network, run_container):
    nft = _show_text(make_network, run_container, "nftables")
    ebpf = _show_text(make_network, run_container, "ebpf")
    assert nft == ebpf, f"nftables:\n{nft}\nebpf:\n{ebpf}"
