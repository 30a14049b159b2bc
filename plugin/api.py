"""The daemon's own API for the `secnet` CLI, on the plugin's root-only socket.

Routes live under ``/secnet/``; they read saved state and the kernel, and
policy edits go through the reconciler (one atomic nft transaction) before
they are saved. Errors use the same ``{"Err": ...}`` shape as the driver.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace

from flask import Response, request

from segmentation.errors import PolicyError
from segmentation.model import Policy
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules

from .droplog import current_names
from .errors import BadRequest, DriverError, Internal, NotFound
from .explain import explain
from .verify import verify
from .views import network_view, status_view

log = logging.getLogger(__name__)


def _reply(body, status=200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _count(body: dict, key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{key} must be a non-negative integer")
    return value


class Api:
    def __init__(self, driver):
        self.driver = driver
        self._verifying = threading.Lock()  # one verification at a time: each opens many sockets

    def find_network(self, ref: str):
        """A network by full id or unique id prefix."""
        ref = (ref or "").lower()
        nets = [n for n in self.driver.state.networks() if n.id.startswith(ref)] if ref else []
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
        return status_view(self.driver)

    def show(self, body):
        net = self.find_network(body.get("network"))
        self._current_names(net)
        return network_view(self.driver, net)

    def policy(self, body):
        net = self.find_network(body.get("network"))
        action = body.get("action") or "get"
        texts = body.get("rules") or []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("rules must be a list of strings")
        if action != "get":
            net = self._change_policy(net, action, texts)
        return {"network": net.id, "rules": NetworkOptions.from_dict(net.options).to_dict()["rules"]}

    def log(self, body):
        droplog = getattr(self.driver, "droplog", None)
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
            result = explain(self.driver.policy.compiled(net), self.driver.state.endpoints(net.id), *args)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        return dict(result, network=net.id)

    def verify(self, body):
        net = self.find_network(body.get("network"))
        self._current_names(net)
        with self._verifying:
            return verify(net.id, self.driver.policy.compiled(net), self.driver.state.endpoints(net.id))

    def metrics(self, _body):
        metrics = getattr(self.driver, "metrics", None)
        if metrics is None:
            raise Internal("metrics are not set up")
        return {"text": metrics.text(), "samples": metrics.samples()}

    def _change_policy(self, net, action: str, texts: list):
        options = NetworkOptions.from_dict(net.options)
        try:
            rules = parse_rules(" ".join(texts))
            policy = Policy(options)
            if action == "set":
                policy = policy.with_rules(rules)
            elif action == "add":
                policy = policy.add_rules(rules)
            elif action == "remove":
                policy = policy.remove_rules(rules)
            else:
                raise BadRequest(f"unknown policy action {action!r}: use set, add or remove")
            new_options = NetworkOptions.from_dict(policy.options.to_dict())  # re-validates
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        new_net = replace(net, options=new_options.to_dict())
        with self.driver.lock:
            self.driver.policy.policy_changed(new_net)
            try:
                self.driver.state.put_network(new_net)
            except Exception:
                self.driver.policy.policy_changed(net)
                raise
        log.info("policy of network %s is now: %s", net.id[:12], ", ".join(new_net.options["rules"]))
        return new_net

    def register(self, app) -> None:
        for name in ("status", "show", "policy", "log", "explain", "verify", "metrics"):
            app.add_url_rule(f"/secnet/{name}", f"secnet_{name}",
                             (lambda name=name: self._handle(name)), methods=["POST"])

    def _handle(self, name: str) -> Response:
        try:
            raw = request.get_data(cache=False)
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise BadRequest("request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            return _reply(getattr(self, name)(body))
        except DriverError as exc:
            return _reply({"Err": exc.message}, exc.status)
        except Exception as exc:
            log.exception("/secnet/%s failed", name)
            return _reply({"Err": f"internal error: {type(exc).__name__}: {exc}"}, 500)
