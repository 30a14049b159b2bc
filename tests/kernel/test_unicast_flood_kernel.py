"""A unicast frame the bridge floods (its destination MAC not learned yet) reaches only
the port whose container owns that MAC, on every backend.

A Linux bridge sends a unicast frame whose destination it has not learned to every
port (net/bridge/br_input.c, ``br_handle_frame_finish``: no fdb entry -> ``br_flood``),
and the forward hook sees each copy with the copy's output port. Judged by addresses
alone, the copy to a third container passes whenever the flow is allowed: a member of
another segment would read the first packets of others' flows (a new container's, or
any flow after its entry aged out of the fdb). secnet passes a unicast frame to a
container's port only when its destination MAC is that container's.
"""
from __future__ import annotations

import pytest

from nsfixtures import lab  # noqa: F401 (fixture)
from packets import Sniffer, send_frame, udp4_frame

pytestmark = pytest.mark.kernel


def _flooded(lab, client, web, evil, tag: bytes) -> tuple:
    """(frames at web, frames at evil) carrying ``tag``, after ``client`` sent web a UDP
    datagram three times with web's MAC unlearned (it has not sent anything since, or it
    aged out): the bridge floods each to every port."""
    lab.exec("bridge", "fdb", "del", web.mac, "dev", web.veth, "master", check=False)
    at_web, at_evil = Sniffer(web), Sniffer(evil)
    try:
        frame = udp4_frame(client, web.mac, client.ip4, web.ip4, 5353, tag)
        for _ in range(3):
            send_frame(client, frame)
        return ([f for f in at_web.frames(0.5) if tag in f],
                [f for f in at_evil.frames(0.2) if tag in f])
    finally:
        at_web.close()
        at_evil.close()


def test_a_flooded_unicast_frame_reaches_only_its_destination(lab):
    client, web, evil = lab.add(3)
    lab.apply("client->web:udp/5353", {client: "client", web: "web", evil: "evil"}, intra="deny")
    got_web, got_evil = _flooded(lab, client, web, evil, b"FLOODED-TO-ALL")
    assert got_web, f"{lab.backend_name}: the allowed frame did not reach its destination"
    assert got_evil == [], f"{lab.backend_name}: {len(got_evil)} flooded copies reached a third container"


@pytest.mark.parametrize("state", ["quarantined", "pending"])
def test_in_audit_mode_a_flooded_unicast_frame_skips_an_inactive_port(lab, state):
    """Audit mode lets a pending or quarantined container's would-drops pass, and the group
    copies it would get; a unicast copy for another container's MAC is no would-drop of its
    own and is never delivered (docs/deviations.md: in both modes)."""
    client, web, evil = lab.add(3)
    lab.apply("client->web:udp/5353", {client: "client", web: "web", evil: "evil"}, mode="audit")
    lab.move(evil, None, quarantine="invalid label" if state == "quarantined" else None)
    got_web, got_evil = _flooded(lab, client, web, evil, b"FLOODED-IN-AUDIT")
    assert got_web, f"{lab.backend_name}: the allowed frame did not reach its destination"
    assert got_evil == [], f"{lab.backend_name}: {len(got_evil)} flooded copies reached the {state} container"
