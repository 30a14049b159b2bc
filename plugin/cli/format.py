"""Text output of the CLI's visibility commands: log, explain, verify, metrics."""
from __future__ import annotations

import sys
import time


def _end(end: dict) -> str:
    """One end of a dropped flow: ``name (segment, address)`` or ``address (outside)``."""
    addr = end.get("address") or "-"
    if end.get("container"):
        where = end.get("segment") or end.get("state") or "?"
        return f"{end['container']} ({where}, {addr})"
    if end.get("multicast"):
        return f"{addr} (multicast)"
    return f"{addr} (outside)" if end.get("outside") else addr


def _what(entry: dict) -> str:
    proto = entry.get("proto") or "?"
    if entry.get("dport") is not None:
        return f"{proto}/{entry['dport']}"
    if entry.get("icmp_type") is not None:
        return f"{proto} type {entry['icmp_type']}"
    return proto


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def log_line(entry: dict, with_network: bool = False) -> str:
    net = f"{entry.get('network_name') or entry.get('network', '')[:12]}  " if with_network else ""
    mark = "  audit (passed; enforce mode would drop it)" if entry.get("audit") else ""
    return (f"{_stamp(entry['time'])}  {net}{_end(entry['src'])} -> {_end(entry['dst'])}"
            f"  {_what(entry)}  {entry.get('why') or entry.get('reason')}{mark}")


def print_log(data: dict, with_network: bool = False) -> None:
    for entry in data["entries"]:
        print(log_line(entry, with_network))


def _side(desc: dict) -> str:
    if desc.get("kind") == "segment":
        return f"segment {desc['segment']}"
    if desc.get("outside"):
        return f"{desc['address']} (outside)"
    where = desc.get("segment") or ("quarantined" if desc.get("quarantined") else "pending")
    addrs = ", ".join(a for a in (desc.get("ipv4"), desc.get("ipv6")) if a)
    return f"{desc.get('container') or desc['input']} ({where}, {addrs})"


def print_explain(data: dict) -> None:
    what = data["proto"] if data["port"] is None else f"{data['proto']}/{data['port']}"
    if data["proto"] != "icmp" and data["port"] is None:
        what += " (every port)"
    print(f"{'allowed' if data['allowed'] else 'denied'}  {_side(data['src'])} -> {_side(data['dst'])}  {what}")
    if data["dst"].get("hairpin"):
        via = data["dst"]["hairpin"]
        print(f"  through the published port {_host(via['address'])}:{via['port']} (a hairpin: judged as east-west)")
    if data["allowed"] and data.get("rule") and data["rule"] != "intra":
        print(f"  rule: {data['rule']}")
        if data.get("also"):
            print(f"  also allowed by: {', '.join(data['also'])}")
        if data.get("answer"):
            print(_answer(data["answer"]))
    else:
        print(f"  reason: {data['reason']}")
        if data.get("would_drop"):
            print("  audit mode: it passes; enforce mode would drop it")


def ports_text(ports: list) -> str:
    """A member's published ports in Docker's notation (``docker ps``):
    ``0.0.0.0:45733->8080/tcp, [::]:45733->8080/tcp``; empty when none."""
    return ", ".join(f"{_host(p['host_ip'])}:{p['host_port']}->{p['container_port']}/{p['proto']}" for p in ports)


def _host(address: str) -> str:
    """An address as written before a port: IPv6 in brackets (the CLI's own copy of
    plugin.driver.portmap.host_text: the CLI imports no daemon code)."""
    return f"[{address}]" if ":" in address else address


def _when(t: float, now: float) -> str:
    left = int(round(t - now))
    ago = f"in {left}s" if left >= 0 else f"{-left}s ago"
    return f"{time.strftime('%H:%M:%S', time.localtime(t))} ({ago})"


def print_dns_rules(rows: list, now: float | None = None) -> None:
    """``secnet show``: each DNS rule, the addresses learned for it and their expiry."""
    if not rows:
        return
    now = time.time() if now is None else now
    print("dns names (addresses learned from DNS answers):")
    for row in rows:
        print(f"  {row['rule']}")
        if not row["addresses"]:
            print("    (no address learned)")
        for a in row["addresses"]:
            print(f"    {a['segment']:<16} {a['address']:<39} {a['name']}  expires {_when(a['expires'], now)}")


def _answer(answer: dict) -> str:
    return (f"  dns: {answer['name']} answered {answer['address']} at "
            f"{_stamp(answer['learned'])}, expires {_stamp(answer['expires'])}")


def _word(allowed: bool) -> str:
    return "allow" if allowed else "deny"


def _cell_text(c) -> str:
    """One matrix cell: allow, deny, audit (passes, would drop) or MISMATCH; '-' when not probed."""
    if c is None:
        return "-"
    if c["observed"] != c["expected"]:
        return "MISMATCH"
    return "audit" if c.get("would_drop") else _word(c["expected"])


def print_verify(data: dict) -> None:
    cells = data["cells"]
    mode = f" ({data['mode']} mode)" if data.get("mode", "enforce") != "enforce" else ""
    print(f"verify network {data.get('name') or data['network'][:12]}{mode}: {len(data['segments'])} segment(s), "
          f"{data['probes']} probe(s) in {data['seconds']:.1f} s, {data['mismatches']} mismatch(es)")
    if cells:
        _print_matrix(data)
    else:
        print("nothing to probe: no segment pair has running members")
    if data.get("idle"):
        print(f"not probed (no running member): {', '.join(data['idle'])}")
    if data.get("single"):
        print(f"not probed within the segment (one member only): {', '.join(data['single'])}")


def _print_matrix(data: dict) -> None:
    """The expected-vs-observed matrix, its legend and one line per mismatch."""
    cells = data["cells"]
    services = data["services"]
    width = max([len(s) + 1 for s in services] + [9])
    rows = {}
    for c in cells:
        rows.setdefault((c["src"], c["dst"], c["family"]), {})[c["service"]] = c
    label = max([len(f"{s} -> {d}") for s, d, _f in rows] + [10])
    unnamed = set(data.get("unnamed", ()))
    print(" " * (label + 6) + "".join(f"{s + ('*' if s in unnamed else ''):<{width}}" for s in services))
    for (src, dst, fam), row in rows.items():
        line = f"{src + ' -> ' + dst:<{label}}  v{fam}  "
        for s in services:
            line += f"{_cell_text(row.get(s)):<{width}}"
        print(line.rstrip())
    if unnamed:
        print("* a port (or protocol) that no rule names")
    if any(c.get("would_drop") for c in cells):
        print("audit: passes in audit mode; enforce mode would drop it")
    for c in cells:
        if c["observed"] != c["expected"]:
            print(f"MISMATCH {c['src']} ({c['src_container']} {c['src_address']}) -> {c['dst']} "
                  f"({c['dst_container']} {c['dst_address']}) {c['service']} IPv{c['family']}: expected "
                  f"{_word(c['expected'])} ({c['reason']}), observed {_word(c['observed'])} ({c['outcome']})")


def print_metrics(data: dict) -> None:
    sys.stdout.write(data["text"])


def engine_line(engine: dict) -> str:
    """``secnet status``'s engine line: version, firewall backend, forward-filter mode."""
    version = engine.get("version") or "not detected yet"
    api = f" (API {engine['api_version']})" if engine.get("api_version") else ""
    backend = engine.get("firewall_backend") or "iptables (not reported)"
    if not engine.get("version"):
        backend = "unknown"
    return (f"engine: Docker {version}{api}; firewall {backend}; forward filter "
            f"{engine.get('forward_filter', '?')}: {engine.get('reason', '')}")
