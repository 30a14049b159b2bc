"""secnet: the command line, talking to the daemon over its unix socket.

NETWORK is a network's name or id as in `docker network inspect`: names are
resolved through the Docker engine by this process (never by the daemon's
request path); when the engine does not answer, an id or id prefix works.
Exit status 0 on success, non-zero with a one-line reason on stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

from plugin.cli import format as fmt
from plugin.cli import client
from plugin.cli.client import CliError, DaemonUnreachable, UsageError, call, network_names, resolve_network


# --- output -----------------------------------------------------------------

def _print_status(data: dict) -> None:
    print(f"daemon: {'healthy' if data.get('healthy') else 'unhealthy'}; "
          f"networks: {len(data['networks'])}; reconcile repairs: {data.get('reconcile_repairs', 0)}")
    if data.get("engine"):
        print(fmt.engine_line(data["engine"]))
    for n in data["networks"]:
        print(f"  {_name_and_id(n)}  bridge {n['bridge']:<15}  {n.get('backend', 'nftables')}"
              f"  mode {n.get('mode', 'enforce')}  endpoints {n['endpoints']}"
              f"  pending {n['pending']}  quarantined {n['quarantined']}  rules {n['rules']}")
    if data.get("dns"):
        d = data["dns"]
        print(f"dns: {d['learned']} address(es) learned from {d['answers']} answer(s); "
              f"{d['refused']} refused at the bound ({d.get('bound_per_segment', '-')} per segment, "
              f"{d['bound_per_network']} per network, "
              f"{d['bound_total']} in all)")
        budget = d.get("budget_drops")
        print(f"dns: answers dropped before learning: "
              f"{'unknown' if budget is None else budget} over a destination's budget, "
              f"{d.get('queue_lost', 0)} queue overflow(s), {d.get('queue_dropped', 0)} cut")


def _name_and_id(net: dict) -> str:
    return f"{net['name']}  {net['id'][:12]}" if net.get("name") else net["id"][:12]


def _print_show(data: dict) -> None:
    opts = data.get("options") or {}
    defaults = "".join(f", {key} {opts[key]}" for key in ("intra", "egress") if key in opts)
    print(f"network {data.get('name') or data['id'][:12]} (bridge {data['bridge']}, backend {data.get('backend', 'nftables')},"
          f" mode {data.get('mode', 'enforce')}{defaults}{', internal' if opts.get('internal') else ''})")
    if data.get("mode") == "audit":
        print("  audit mode: policy drops nothing; `secnet log` shows what enforce mode would drop")
    print("segments:")
    for seg in data["segments"]:
        print(f"  {seg['name']}: {len(seg['members'])} member(s)")
        for m in seg["members"]:
            addrs = " ".join(a for a in (m["ipv4"], m["ipv6"]) if a)
            ports = fmt.ports_text(m.get("ports") or [])
            print(f"    {m['container'] or '(unknown)':<24} {addrs}" + (f"  ports {ports}" if ports else ""))
    print("rules:")
    for r in data["rules"]:
        print(f"  {r['rule']:<48} packets {r['packets']:>10}  bytes {r['bytes']:>12}")
    fmt.print_dns_rules(data.get("dns") or [])
    if data["quarantined"]:
        print("quarantined:")
        for m in data["quarantined"]:
            print(f"  {m['container'] or m['endpoint']:<24} {m['ipv4']} {m['ipv6']}  reason: {m['reason']}")
    if data["pending"]:
        print("pending (segment not known yet, all traffic dropped):")
        for m in data["pending"]:
            print(f"  {m['container'] or m['endpoint']:<24} {m['ipv4']} {m['ipv6']}")
    for key, title in (("dropped", "dropped:"), ("would_drop", "would drop (audit mode let it pass):")):
        counted = any(c["packets"] for c in (data.get(key) or {}).values())
        if data.get(key) and (key == "dropped" or counted or data.get("mode") == "audit"):
            print(title)
            for reason, c in sorted(data[key].items()):
                print(f"  {reason:<20} packets {c['packets']:>10}  bytes {c['bytes']:>12}")


# --- commands ---------------------------------------------------------------

def _named(data: dict, key: str = "id") -> dict:
    """``data`` with the network's name (``name``) as the engine has it: the daemon knows
    networks by id only (Docker does not tell a driver their names)."""
    name = network_names().get(data.get(key, ""))
    if name:
        data["name"] = name
    return data


def cmd_status(args) -> dict:
    data = call("/secnet/status", {})
    names = network_names() if data.get("networks") else {}
    for net in data.get("networks", []):
        if names.get(net["id"]):
            net["name"] = names[net["id"]]
    # by name (then id): two hosts with the same networks print them alike (U28-F5)
    data.get("networks", []).sort(key=lambda n: (n.get("name") is None, n.get("name") or "", n["id"]))
    return data


def cmd_show(args) -> dict:
    return _named(call("/secnet/show", {"network": resolve_network(args.network)}))


def cmd_policy(args) -> dict:
    if args.action == "clear" and args.rules:
        raise UsageError("policy clear takes no RULE (it removes every rule); to replace them: set RULE...")
    if args.action in EDITS and not any(map(str.strip, args.rules)):
        raise UsageError(f"policy {args.action} needs at least one RULE (none given: an empty variable?)"
                       + ("; to remove every rule: secnet policy NETWORK clear" if args.action == "set" else ""))
    if args.action is None and args.rules:
        raise UsageError("use: secnet policy NETWORK [set|add|remove RULE... | clear]")
    # an edit prints one line; only --json (and printing the rules) needs them all back
    network = resolve_network(args.network)
    body = {"network": network, "action": args.action or "get",
            "rules": args.rules, "list": args.json or args.action is None}
    data = call("/secnet/policy", body)
    if client.NAMES.get(network):
        data["name"] = client.NAMES[network]
    return data


def _print_policy(data: dict) -> None:
    """The rules, one per line; after an edit (no rules sent back) how many are in force.
    After a set or an add, a note on stderr names the segments the rules given name and
    that no container of the network is in (a misspelt one fails closed: U26-F7)."""
    name = data.get("name") or data["network"][:12]
    memberless = data.get("memberless")
    if memberless:
        print(f"secnet: note: no container of network {name} is in segment{'' if len(memberless) == 1 else 's'} "
              f"{', '.join(memberless)} (names are case-sensitive): rules naming "
              f"{'it' if len(memberless) == 1 else 'them'} match nothing until one joins", file=sys.stderr)
    if "rules" in data:
        if data["rules"]:
            print("\n".join(data["rules"]))
        return
    count = data["count"]
    print(f"network {name}: {count} rule{'' if count == 1 else 's'} in force")


def cmd_mode(args) -> dict:
    body = {"network": resolve_network(args.network)}
    if args.mode:
        body["mode"] = args.mode
    return call("/secnet/mode", body)


def cmd_log(args):
    body = {"network": resolve_network(args.network)} if args.network else {}
    data = call("/secnet/log", body)
    if not args.follow:
        return _log_names(args, data)
    _emit_log(args, data)
    cursor = data["cursor"]
    try:
        while True:
            time.sleep(0.5)
            try:  # a daemon restart: wait for it; the cursor stays valid (docs/visibility.md)
                data = call("/secnet/log", dict(body, since=cursor))
            except DaemonUnreachable:
                continue
            _emit_log(args, data)
            cursor = data["cursor"]
    except KeyboardInterrupt:
        return None


def _log_names(args, data: dict) -> dict:
    """``data`` whose entries carry ``network_name`` when the log spans every network
    (the names are read again when an entry names a network not seen yet)."""
    if args.network:
        return data
    names = getattr(args, "names", None)
    if names is None or any(e.get("network") not in names for e in data["entries"]):
        names = args.names = network_names()
    for entry in data["entries"]:
        if names.get(entry.get("network")):
            entry["network_name"] = names[entry["network"]]
    return data


def _emit_log(args, data: dict) -> None:
    _log_names(args, data)
    for entry in data["entries"]:
        print(json.dumps(entry, sort_keys=True) if args.json else fmt.log_line(entry, not args.network))
    sys.stdout.flush()


def cmd_explain(args) -> dict:
    return call("/secnet/explain", {"network": resolve_network(args.network), "src": args.src,
                                    "dst": args.dst, "service": args.service})


def cmd_verify(args) -> dict:
    return _named(call("/secnet/verify", {"network": resolve_network(args.network)}, timeout=300),
                  "network")


def cmd_metrics(args) -> dict:
    return call("/secnet/metrics", {})


COMMANDS = {"status": cmd_status, "show": cmd_show, "policy": cmd_policy, "mode": cmd_mode, "log": cmd_log,
            "explain": cmd_explain, "verify": cmd_verify, "metrics": cmd_metrics}
PRINTERS = {
    "status": _print_status,
    "show": _print_show,
    "policy": _print_policy,
    "mode": lambda d: print(d["mode"]),
    "log": fmt.print_log,
    "explain": fmt.print_explain,
    "verify": fmt.print_verify,
    "metrics": fmt.print_metrics,
}


EDITS = ("set", "add", "remove")   # take one RULE or more; "clear" takes none
NETWORK_HELP = "a secnet network's name or id, as in docker network inspect"
END_HELP = "container name, segment name or address; container:NAME or segment:NAME when a name is both"


def parser():
    """The command line's ``argparse.ArgumentParser`` (argparse imported here: a plain rule
    edit is parsed without it, see :func:`_rule_arguments`; its import and this parser's
    making cost ~8 ms of CPU, most of it gettext looking for translations)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        """Usage errors as one line (a CliError), from the subcommands' parsers too."""

        def error(self, message):
            command = self.prog.partition(" ")[2]
            raise UsageError(f"{command}: {message}" if command else message)
    p = _Parser(prog="secnet", description="Inspect and steer the secnet network driver.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # --json is taken out of argv before parsing (main); listed in each verb's --help too
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name, text):
        return sub.add_parser(name, help=text, description=text, parents=[js])
    verb("status", "the daemon's health, its networks, endpoint counts")
    verb("show", "segments, members, rules with counters, quarantine").add_argument(
        "network", metavar="NETWORK", help=NETWORK_HELP)
    s = verb("policy", "print or change a network's allow rules (in force when it returns 0)")
    s.add_argument("network", metavar="NETWORK", help=NETWORK_HELP)
    s.add_argument("action", nargs="?", choices=EDITS + ("clear",),
                   help="replace all rules, add or remove some, or remove every rule (clear)")
    s.add_argument("rules", nargs="*", metavar="RULE",
                   help="SRC->DST[:PROTO[/PORTS]], e.g. web->api:tcp/8080, web->dns(api.example.com):tcp/443")
    s = verb("mode", "print or switch a network's mode (enforce or audit)")
    s.add_argument("network", metavar="NETWORK", help=NETWORK_HELP)
    s.add_argument("mode", nargs="?", type=str.lower, choices=("enforce", "audit"))   # as -o secnet.mode
    s = verb("log", "flows that policy dropped, oldest first")
    s.add_argument("network", metavar="NETWORK", nargs="?", help=NETWORK_HELP + " (default: all)")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new drops")
    s = verb("explain", "would policy allow a flow, and why")
    s.add_argument("network", metavar="NETWORK", help=NETWORK_HELP)
    s.add_argument("src", metavar="SRC", help=END_HELP)
    s.add_argument("dst", metavar="DST", help=END_HELP)
    s.add_argument("service", metavar="PROTO[/PORT]", help="tcp/8080, udp/53, icmp, ...")
    verb("verify", "probe every segment pair with real packets").add_argument(
        "network", metavar="NETWORK", help=NETWORK_HELP)
    verb("metrics", "Prometheus text format")
    return p




def _rule_arguments(argv: list) -> tuple:
    """``(argv, rules)``: the RULE arguments of ``policy NETWORK set|add|remove RULE...``
    taken out of ``argv`` (argparse checks each argument, ~3 µs apiece: 10,000 rules
    cost it 30 ms; the daemon checks rules anyway), else ``(argv, None)``. Arguments
    that look like options stay with argparse."""
    if len(argv) > 3 and argv[0] == "policy" and argv[2] in EDITS and \
            not any(a.startswith("-") and "->" not in a for a in argv):
        return argv[:3], argv[3:]   # ('->api' is a rule with no source, not an option: U26-F6)
    return argv, None


#: the commands whose NETWORK is required (argparse's own message for ``secnet policy`` named
#: RULE as required too, which it is not: U26-F6)
NEEDS_NETWORK = ("show", "policy", "mode", "explain", "verify")


def _parsed(argv: list, rules):
    """The parsed command line: a plain rule edit (``rules`` not None: ``argv`` is
    ``policy NETWORK set|add|remove``) as argparse would give it, without argparse."""
    if rules is not None:
        return SimpleNamespace(command=argv[0], network=argv[1], action=argv[2], rules=rules)
    if len(argv) == 1 and argv[0] in NEEDS_NETWORK:
        raise UsageError(f"{argv[0]}: NETWORK is missing (a name or id: secnet status lists them);"
                         f" see secnet {argv[0]} --help")
    return parser().parse_args(argv)


def _as_typed(exc: CliError, ref) -> CliError:
    """The daemon names a network by the id the engine resolved; the user's
    error names NETWORK as typed (e.g. a network of another driver). When the engine
    could not be reached to map NETWORK to an id, the error says so (U18-F3): the
    daemon knows networks by id only, and an id works without the engine."""
    if ref and str(exc).startswith("no secnet network ") and ref in client.UNMAPPED:
        return CliError(f"no secnet network with the id {ref!r}, and the Docker engine cannot be reached "
                        f"to map a network name to its id: give the network's id (`secnet status` lists them)")
    if ref and str(exc).startswith("no secnet network ") and repr(ref.lower()) not in str(exc):
        return CliError(f"no secnet network {ref!r} (Docker has a network of that name or id, "
                        f"but not on this secnet daemon: another driver)")
    return exc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv, rules = _rule_arguments([a for a in argv if a != "--json"] if as_json else argv)
    args = None
    try:
        args = _parsed(argv, rules)
        args.json = as_json
        data = COMMANDS[args.command](args)
    except CliError as exc:
        exc = _as_typed(exc, getattr(args, "network", None))
        print(f"secnet: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    try:
        if data is None:  # printed as it came (log --follow)
            pass
        elif as_json:
            print(json.dumps(data["samples"] if args.command == "metrics" else data, indent=2, sort_keys=True))
        elif args.command == "log":
            fmt.print_log(data, with_network=not args.network)
        else:
            PRINTERS[args.command](data)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if args.command == "verify" and not data["ok"]:
        print(f"secnet: verify: {data['mismatches']} mismatch(es) between expected and observed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
