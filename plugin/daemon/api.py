"""The daemon's own API for the `secnet` CLI, on the plugin's root-only socket.

Routes live under ``/secnet/``; they read saved state and the kernel
through the read-only views; policy and mode edits are verbs of the driver
(the only writer of state), which applies them through the reconciler in one
atomic step before saving them. Errors use the same ``{"Err": ...}`` shape
as the driver, mapped in one place (``plugin.daemon.app.error_reply``).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
from dataclasses import replace

from flask import Response, request

from segmentation.errors import PolicyError
from segmentation.model import Policy
from segmentation.options import MODES
from segmentation.rules import parse_rules, rule_texts, segment_mentions

from plugin.daemon.app import error_reply
from plugin.errors import BadRequest, Internal, NotFound
from plugin.observe.explain import explain
from plugin.observe.verify import verify
from plugin.observe.views import network_view, status_view
from plugin.observe.droplog import current_names

log = logging.getLogger(__name__)


def _reply(body, status=200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


@contextlib.contextmanager
def collection_deferred():
    """Python's cyclic garbage collector paused for the block (process-wide), then
    resumed; nothing is collected here.

    A policy edit of 10,000 rules allocates ~10^5 tracked objects: with the collector
    on, that is ~100 young collections, which trigger full ones over the whole heap
    (40-60 ms each with 1,000 endpoints and 10,000 rules in force, one per edit). Paused,
    the edit's survivors are seen by one young collection after it, and the full ones
    come as rarely as the allocation counts make them. Nothing is left uncollected.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _count(body: dict, key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{key} must be a non-negative integer")
    return value


class Api:
    """The CLI's requests: one method per route, each taking the JSON body (a dict)."""

    def __init__(self, driver, reconciler, droplog=None, metrics=None, engine=None):
        self.driver, self.state, self.reconciler = driver, driver.state, reconciler
        self.droplog, self._metrics, self.engine = droplog, metrics, engine
        self._verifying = threading.Lock()  # one verification at a time: each opens many sockets

    def find_network(self, ref: str):
        """A network by full id or unique id prefix (NotFound, BadRequest if ambiguous)."""
        ref = (ref or "").lower()
        nets = [n for n in self.state.networks() if n.id.startswith(ref)] if ref else []
        if len(nets) == 1:
            return nets[0]
        if not nets:
            raise NotFound(f"no secnet network {ref!r}")
        raise BadRequest(f"network id prefix {ref!r} is ambiguous")

    def _current_names(self, net=None) -> None:
        """Re-read the engine's container names (of ``net``, else all) before a
        command shows or looks up names: a name means its current holder."""
        refresh = getattr(getattr(self.driver, "resolver", None), "refresh_names", None)
        if refresh is None:
            return
        try:
            refresh(network_id=net.id if net is not None else None)
        except Exception as exc:  # the engine is away: the names the events gave
            log.info("cannot re-read container names: %s: %s", type(exc).__name__, exc)

    # --- handlers -----------------------------------------------------------
    def status(self, _body):
        engine = self.engine() if callable(self.engine) else self.engine
        return status_view(self.state, self.reconciler, engine)

    def show(self, body):
        net = self.find_network(body.get("network"))
        self._current_names(net)
        return network_view(self.state, self.reconciler, net)

    def policy(self, body):
        """Print or edit the rules. Answers ``{"network", "count", "rules"}``; after an
        edit with ``"list": false`` in the body, without ``rules`` (10,000 rule texts
        are most of an edit's answer). After a ``set`` or an ``add``, ``"memberless"``
        lists (sorted) the segments that the rules given name and that no endpoint of
        the network is in: a misspelt segment fails closed, and the CLI says so (U26-F7)."""
        net = self.find_network(body.get("network"))
        action = body.get("action") or "get"
        texts = body.get("rules") or []
        if not isinstance(texts, list) or not set(map(type, texts)) <= {str}:
            raise BadRequest("rules must be a list of strings")
        listed = body.get("list", True)
        if not isinstance(listed, bool):
            raise BadRequest("list must be true or false")
        given = ()
        if action != "get":
            with collection_deferred():
                net, given = self._change_policy(net, action, texts)
        out = {"network": net.id, "count": len(net.options.rules)}
        if action in ("set", "add"):
            out["memberless"] = self._memberless(net.id, given)
        if listed or action == "get":
            out["rules"] = rule_texts(net.options.rules)
        return out

    def mode(self, body):
        net = self.find_network(body.get("network"))
        mode = body.get("mode")
        if mode is not None:
            if not isinstance(mode, str) or mode.strip().lower() not in MODES:
                raise BadRequest(f"invalid mode {mode!r}: allowed {', '.join(MODES)}")
            net = self.driver.edit_options(net.id, lambda o: (replace(o, mode=mode.strip().lower()), None))
            log.info("network %s is now in %s mode", net.id[:12], net.options.mode)
        return {"network": net.id, "mode": net.options.mode}

    def log(self, body):
        droplog = self.droplog
        if droplog is None:
            raise Internal("the drop log is not running")
        net = self.find_network(body["network"]) if body.get("network") else None
        self._current_names(net)
        found = droplog.query(net.id if net else None, _count(body, "since", 0),
                              _count(body, "limit", droplog.ring.maxlen))
        current_names(found["entries"], self.driver.state.endpoints(net.id if net else None))
        return found

    def explain(self, body):
        net = self.find_network(body.get("network"))
        args = [body.get(k) for k in ("src", "dst", "service")]
        if not all(isinstance(a, str) and a for a in args):
            raise BadRequest("explain needs src, dst and service (e.g. tcp/8080)")
        self._current_names(net)
        try:
            dns = getattr(self.reconciler, "dns", None)
            result = explain(self.reconciler.compiled(net), self.state.endpoints(net.id), *args,
                             learned=dns.learned(net.id) if dns is not None else None,
                             mode=net.options.mode, subnets=[pool for pool, _gw in net.ipv4 + net.ipv6],
                             gateways=net.gateways())
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        return dict(result, network=net.id)

    def verify(self, body):
        net = self.find_network(body.get("network"))
        self._current_names(net)
        with self._verifying:
            return verify(net.id, self.reconciler.compiled(net), self.state.endpoints(net.id),
                          mode=net.options.mode)

    def metrics(self, _body):
        if self._metrics is None:
            raise Internal("metrics are not set up")
        return {"text": self._metrics.text(), "samples": self._metrics.samples()}

    def _change_policy(self, net, action: str, texts: list):
        """Apply ``action`` with the parsed ``texts`` to the network's rules as they are
        under the driver's lock, so that two edits at once both take effect. Returns
        ``(network, rules)``: the network as saved and the rules ``texts`` parsed to."""
        if action not in ("set", "add", "remove", "clear"):
            raise BadRequest(f"unknown policy action {action!r}: use set, add, remove or clear")
        # a set: the rules in force (and their texts, kept by the options), so that those
        # it keeps are not parsed again; looked up by text only when it keeps most of them
        in_force = (net.options.rules, net.options.rule_text_set()) if action == "set" else None
        try:
            rules = parse_rules(" ".join(texts), in_force=in_force)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        if action == "clear" and texts:
            raise BadRequest("policy clear takes no rules (it removes every rule)")
        if action != "clear" and not rules:   # an unexpanded variable must not clear a policy
            raise BadRequest(f"policy {action} needs at least one rule (none given); "
                             f"to remove every rule, use clear")

        def change(options):
            try:
                policy = Policy(options)
                if action in ("set", "clear"):   # parse_rules dropped duplicates already
                    return replace(options, rules=rules), None
                policy, edit = (policy.add_rules if action == "add" else policy.remove_rules)(rules)
                return policy.options, edit   # validated: NetworkOptions checks itself
            except PolicyError as exc:
                raise BadRequest(str(exc)) from None
        try:   # e.g. identities run out for the new segments, before any kernel change
            new_net = self.driver.edit_options(net.id, change)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        log.info("policy of network %s: %d rules", net.id[:12], len(new_net.options.rules))
        return new_net, rules

    def _memberless(self, network_id: str, rules) -> list:
        """The segments ``rules`` name that no endpoint of the network is in (sorted)."""
        named = set(segment_mentions(rules))
        if named:
            named.difference_update(e.segment for e in self.state.endpoints(network_id))
        return sorted(named)

    def register(self, app) -> None:
        for name in ("status", "show", "policy", "mode", "log", "explain", "verify", "metrics"):
            app.add_url_rule(f"/secnet/{name}", f"secnet_{name}",
                             (lambda name=name: self._handle(name)), methods=["POST"])

    def _handle(self, name: str) -> Response:
        try:
            raw = request.get_data(cache=False)
            try:
                body = json.loads(raw) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("request body is not valid JSON") from None
            except RecursionError:   # json's C scanner recurses once per nesting level
                raise BadRequest("request body is nested too deeply") from None
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            return _reply(getattr(self, name)(body))
        except Exception as exc:
            return error_reply(f"/secnet/{name}", exc, "application/json")
