"""Which conntrack entries a policy change deletes (pure: no kernel)."""
from plugin.kernel.conntrack import parse_entry, stale_flows
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import parse_network_options

MEMBERS = {"10.0.0.2": "web", "10.0.0.3": "api", "fd00::2": "web"}


def _compiled(rules: str, **opts):
    options = parse_network_options({"secnet.allow": rules, **opts})
    return compile_policy(options, [Member("a", "web", "10.0.0.2", "fd00::2"), Member("b", "api", "10.0.0.3")])


def _line(proto, src, dst, sport, dport, rsrc=None):
    rsrc = rsrc or dst
    return (f"{proto} 6 431999 ESTABLISHED src={src} dst={dst} sport={sport} dport={dport} "
            f"src={rsrc} dst={src} sport={dport} dport={sport} [ASSURED] mark=0 use=1")


def test_parse_entry_reads_the_original_direction():
    assert parse_entry(_line("tcp", "10.0.0.2", "10.0.0.3", 4000, 8080)) == ("tcp", "10.0.0.2", "10.0.0.3", 4000, 8080)
    assert parse_entry("garbage") is None


def test_parse_entry_skips_dnat_flows():
    assert parse_entry(_line("tcp", "192.0.2.9", "192.0.2.1", 4000, 18080, rsrc="10.0.0.2")) is None


def test_only_denied_flows_are_stale():
    lines = [_line("tcp", "10.0.0.2", "10.0.0.3", 4000, 8080), _line("tcp", "10.0.0.2", "10.0.0.3", 4001, 9090),
             _line("udp", "10.0.0.3", "10.0.0.2", 4002, 53)]
    stale = stale_flows(lines, _compiled("web->api:tcp/8080"), MEMBERS)
    assert stale == [("tcp", "10.0.0.2", "10.0.0.3", 4001, 9090), ("udp", "10.0.0.3", "10.0.0.2", 4002, 53)]


def test_egress_flows_follow_egress_setting():
    line = _line("tcp", "10.0.0.2", "198.51.100.7", 4000, 443)
    assert stale_flows([line], _compiled("", **{"secnet.egress": "allow"}), MEMBERS) == []
    assert stale_flows([line], _compiled("", **{"secnet.egress": "deny"}), MEMBERS) == [
        ("tcp", "10.0.0.2", "198.51.100.7", 4000, 443)]


def test_flows_of_other_networks_are_left_alone():
    assert stale_flows([_line("tcp", "172.17.0.2", "172.17.0.3", 1, 2)], _compiled(""), MEMBERS) == []
