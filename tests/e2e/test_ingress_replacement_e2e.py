"""A replaced container behind a published UDP port stays behind the segment's ingress rules.

Found by black-box testing (user5, finding F4): on `secnet.backend=ebpf`, once a rule with a
CIDR source names segment `api`, a UDP stream from an outside address that no rule allows
does not reach the `api` container behind `-p P:9100/udp` (correct), but after that
container is replaced by another `api` container on the same published port, the stream's
next datagrams reach the new one (masqueraded to the gateway). nftables drops them.
Contract: "from then on only what such rules allow gets in"; fail closed.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

import helpers as h

pytestmark = pytest.mark.usefixtures("backend")

SEG = "secnet.segment"
SEND = "import socket,sys,time\ns=socket.socket(2,2); s.bind(('0.0.0.0',int(sys.argv[3])))\n" \
       "end=time.time()+float(sys.argv[4])\nwhile time.time()<end:\n" \
       "    s.sendto(b'x',(sys.argv[1],int(sys.argv[2]))); time.sleep(0.2)\n"
RECV = "import socket,sys\ns=socket.socket(2,2); s.bind(('0.0.0.0',9100))\n" \
       "while True:\n    d,p=s.recvfrom(100); print(p[0], flush=True)\n"


def _in_ns(c: h.Container, src: str, *args) -> subprocess.Popen:
    return subprocess.Popen(["nsenter", f"--net={c.sandbox}", sys.executable, "-c", src, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _received(proc: subprocess.Popen) -> list:
    proc.kill()
    return proc.communicate(timeout=5)[0].split()


def test_replaced_published_udp_container_gets_nothing_the_ingress_rules_do_not_allow(
        make_network, run_container):
    net = make_network("sn-u5-ingr", opts={"secnet.allow": "web->api:tcp/9000"})
    out = make_network("u5-out", driver="bridge")
    gw_out = out.subnet.rsplit(".", 1)[0] + ".1"
    run_container(net, "web", labels={SEG: "web"})
    run_container(net, "api", labels={SEG: "api"})
    client = run_container(out, "cli", cmd=["sleep", "600"])
    h.run([h.ROOT / ".venv/bin/secnet", "policy", net.name, "remove", "web->api:tcp/9000"])
    h.run([h.ROOT / ".venv/bin/secnet", "policy", net.name, "add", "10.230.99.0/24->api:tcp/9000"])
    port, procs = 18790 + (1 if h.DEFAULT_BACKEND == "ebpf" else 0), []
    try:
        old = run_container(net, "old", labels={SEG: "api"}, cmd=["sleep", "600"],
                            extra=["-p", f"{port}:9100/udp"])
        sink_old = _in_ns(old, RECV)
        time.sleep(0.3)
        procs += [sink_old, _in_ns(client, SEND, gw_out, str(port), "40404", "8")]
        time.sleep(1.5)
        h.docker("rm", "-f", old.name)
        new = run_container(net, "new", labels={SEG: "api"}, cmd=["sleep", "600"],
                            extra=["-p", f"{port}:9100/udp"])
        sink_new = _in_ns(new, RECV)
        procs.append(sink_new)
        time.sleep(3)
        got_old, got_new = _received(sink_old), _received(sink_new)
    finally:
        for p in procs:
            p.kill()
    assert got_old == [], f"the old container got datagrams no rule allows: {got_old[:3]}"
    assert got_new == [], f"the replacing container got {len(got_new)} datagrams no rule allows " \
                          f"(from {sorted(set(got_new))})"
