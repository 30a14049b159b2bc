"""Audit mode and the ICMP errors of a flow it let pass (U12-F7), kernel tier, on
each backend of the lab.

Contract: audit mode reports every flow enforce mode would drop, once, as a
would-drop; the ICMP errors of a flow are part of it (nftables: "ct state
related"), never a flow of their own. So an audited UDP flow to a port where
nothing listens is reported once, and the port-unreachable errors the receiver's
kernel answers with reach the sender and are not reported or counted.
"""
from __future__ import annotations

import pytest

from nsfixtures import drain
from nsfixtures import lab  # noqa: F401 (fixture)
from packets import probe_udp

pytestmark = pytest.mark.kernel

CLOSED = 7000     # nothing listens there (the lab's responder: udp/53 only)


@pytest.mark.parametrize("fam", [4, 6])
def test_icmp_errors_of_an_audited_flow_are_part_of_it(lab, fam):
    web, api = lab.add(2)
    lab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny", mode="audit")
    events = lab.drop_events()
    before = lab.dropped("no-rule", audit=True)
    # api -> web: no rule; audit mode lets it pass, web's kernel refuses it
    assert probe_udp(api, web.ip(fam), CLOSED) == "refused"
    got = [e for e in drain(events, 1.5) if e.reason == "no-rule"]
    assert [(e.src, e.dst, e.port, e.audit) for e in got] == [(api.ip(fam), web.ip(fam), CLOSED, True)], \
        f"the flow, once, and nothing of its ICMP errors: {got}"
    assert lab.dropped("no-rule", audit=True) - before == 1
