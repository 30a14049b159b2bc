"""The remote-driver verbs. Knows no Flask: typed requests in, dicts out.

Order inside every mutating verb: validate completely, then change the
kernel, then persist, and roll the kernel back if anything fails before the
state row is written (CreateNetwork writes its row while nft writes the
tables, and removes it again if they fail). Every verb is idempotent,
because Docker retries after a crash of either side. A live change from the
CLI (policy, mode) is the other way round: nobody retries it, so it is saved
first and then put in force (:meth:`Driver.change_options`).
"""
from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Optional

from segmentation.errors import PolicyError
from segmentation.names import check_segment_name
from segmentation.options import parse_network_options
from segmentation.resolve import SEGMENT_OPT

from plugin.kernel import links as nl
from plugin.enforce.backend import BackendUnavailable
from plugin.errors import BadRequest, Conflict, DriverError, Internal, NotFound, Unsupported
from plugin.driver.portmap import check_families, parse_portmap
from plugin.driver.hostports import Reservations
from plugin.driver.protocol import CreateEndpointRequest, CreateNetworkRequest, EndpointRequest, NetworkRequest
from plugin.driver.nulls import NullReconciler, NullResolver
from plugin.driver import restore as restart
from plugin.driver.state import EndpointRecord, NetworkRecord, State

log = logging.getLogger(__name__)
# a Join response's StaticRoutes RouteType: a route on the container's interface, no next hop
# (libnetwork types.CONNECTED; the engine adds it as a link-scope route of that interface)
CONNECTED = 1


class Driver:
    """The verbs of the remote driver, and the policy and mode edits of the CLI.

    The only writer of the state. ``lock`` serializes every verb (and the
    reconciler's periodic pass, which shares it).
    """

    def __init__(self, state: State, links, firewall, reconciler=None, resolver=None, lock=None):
        self.state = state
        self.links = links
        self.firewall = firewall
        self.reconciler = reconciler or NullReconciler()
        self.resolver = resolver or NullResolver()
        self.ports = Reservations()
        self.lock = lock or threading.RLock()
        # Ids of the networks whose CreateNetwork this process received. The engine
        # records a network only after the driver's CreateNetwork answered, so the
        # label watcher's catch-up, which removes networks the engine does not list
        # (deleted while the daemon was down), must never judge these: one being
        # created is not listed yet. A network created here is deleted here too.
        self.created_since_start: set = set()

    # --- discovery -------------------------------------------------------
    @staticmethod
    def activate() -> dict:
        return {"Implements": ["NetworkDriver"]}

    @staticmethod
    def capabilities() -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    # --- networks --------------------------------------------------------
    def _network(self, nid: str) -> NetworkRecord:
        net = self.state.get_network(nid)
        if net is None:
            raise NotFound(f"network {nid[:12]} not found")
        return net

    def _new_network_record(self, req: CreateNetworkRequest) -> NetworkRecord:
        try:
            opts = parse_network_options(req.generic, docker_mtu=req.docker_mtu,
                                         internal=req.internal, ipv6=req.ipv6)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None
        bridge = opts.bridge or nl.bridge_name(req.network_id)
        for other in self.state.networks():
            if other.bridge == bridge and other.id != req.network_id:
                raise Conflict(f"bridge {bridge} is already used by network {other.id[:12]}")
        v4 = tuple((p.pool, p.gateway) for p in req.ipv4_data)
        v6 = tuple((p.pool, p.gateway) for p in req.ipv6_data) if req.ipv6 else ()
        return NetworkRecord(id=req.network_id, bridge=bridge, mtu=opts.mtu, options=opts,
                             ipv4=v4, ipv6=v6, internal=req.internal)

    def create_network(self, req: CreateNetworkRequest) -> dict:
        self.created_since_start.add(req.network_id)
        rec = self._new_network_record(req)
        refusal = getattr(self.firewall, "refusal", lambda: None)()  # detected in the background
        if refusal:
            raise Unsupported(refusal)
        try:
            self.reconciler.check_backend(rec.options.backend)
        except BackendUnavailable as exc:
            raise BadRequest(str(exc)) from None
        with self.lock:
            old = self.state.get_network(rec.id)
            if old is not None and old != rec:
                raise Conflict(f"network {rec.id[:12]} already exists with other settings")
            try:
                self._realize_network(rec, save=lambda: self.state.put_network(rec))
            except nl.LinkConflict as exc:
                self._unsave_network(old, rec)
                raise Conflict(str(exc)) from None
            except Exception as exc:
                log.exception("create network %s failed", rec.id[:12])
                self._unsave_network(old, rec)
                if old is None:   # a retry keeps its bridge; remove_link takes only ours
                    self._unrealize_network(rec)
                raise Internal(f"cannot create network {rec.id[:12]}: {exc}") from None
        log.info("network %s created (bridge %s)", rec.id[:12], rec.bridge)
        return {}

    def _unsave_network(self, old: Optional[NetworkRecord], rec: NetworkRecord) -> None:
        """A failed create of ``rec``: its rows go unless it was there before (a retry) --
        the identities its tables were allocated too, also when its own row never was."""
        if old is None:
            self.state.delete_network(rec.id)

    def restore_network(self, rec: NetworkRecord, endpoints=()) -> None:
        """The bridge and the forward rules of ``rec`` as a create makes them, without its
        tables (the reconciler's): at start (plugin.driver.restore), and for a bridge
        deleted behind secnet's back (plugin.driver.portwatch). The caller holds
        :attr:`lock`. Raises what the link and firewall writers raise."""
        self._realize_network(rec, endpoints, policy=False)

    def _realize_network(self, rec: NetworkRecord, endpoints=(), policy: bool = True, save=None) -> None:
        """Bridge, then the forward rules outside secnet's tables and (``policy``) the
        network's tables side by side: neither lets anything through without the other
        (Docker's FORWARD drops the bridge's traffic until the DOCKER-USER rules accept
        it, and those accept only what secnet's tables marked), so their order does not
        matter, and the iptables processes' time is spent while nft runs. ``save()``
        (the state row, its fsync) follows the forward rules on their thread, also while
        nft runs; the caller removes the row if anything here fails (a crash before
        that: the row is realized again at start, and dropped once the engine is
        found not to have the network)."""
        made = self.links.ensure_bridge(rec.bridge, rec.id, rec.mtu, rec.gateways(),
                                        options=self.reconciler.bridge_options(rec))
        if rec.ipv6 and self.links.ensure_ipv6_forwarding():
            log.info("IPv6 forwarding switched on (network %s has IPv6 subnets)", rec.id[:12])
        if not policy:
            self.firewall.ensure(rec.bridge, rec.id)
            if save is not None:
                save()
            return
        failed: list = []

        def forward_rules():
            try:
                self.firewall.ensure(rec.bridge, rec.id)
                if save is not None:
                    save()
            except Exception as exc:   # raised below, on the verb's thread
                failed.append(exc)
        worker = threading.Thread(target=forward_rules, name="secnet-forward-ensure")
        worker.start()   # in this thread's network namespace, like a child process
        try:
            self.reconciler.network_added(rec, endpoints, bridge_made=bool(made))
        finally:
            worker.join()
        if failed:
            raise failed[0]

    def _unrealize_network(self, rec: NetworkRecord) -> None:
        """Tables, forward rules and bridge of ``rec`` gone, as much of them as can be (each
        failure logged, the rest removed anyway). The forward rules go on a thread of their
        own (iptables processes) while the tables and then the bridge go here (the kernel's
        bridge removal waits for RCU grace periods): in neither order does anything pass
        meanwhile -- the forward rules accept only what secnet's tables marked, and Docker's
        FORWARD drops the bridge's traffic without them; a deleted network's bridge has no
        port left anyway."""
        def step(fn) -> None:
            try:
                fn()
            except Exception:  # keep going: remove as much as possible
                log.exception("cleanup of network %s", rec.id[:12])
        worker = threading.Thread(target=step, args=(lambda: self.firewall.remove(rec.bridge, rec.id),),
                                  name="secnet-forward-remove")
        worker.start()   # in this thread's network namespace, like a child process
        try:
            step(lambda: self.reconciler.network_removed(rec))
            step(lambda: self.links.remove_link(rec.bridge, owner=rec.id))
        finally:
            worker.join()

    def delete_network(self, req: NetworkRequest) -> dict:
        with self.lock:
            rec = self.state.get_network(req.network_id)
            if rec is None:  # already gone (a retry after a crash): nothing to do
                return {}
            for ep in self.state.endpoints(rec.id):
                self.links.remove_link(ep.veth_host, owner=ep.id)
            self._unrealize_network(rec)
            self.state.delete_network(rec.id)
            self.created_since_start.discard(rec.id)
        log.info("network %s deleted", rec.id[:12])
        return {}

    # --- endpoints -------------------------------------------------------
    def _endpoint(self, nid: str, eid: str) -> EndpointRecord:
        ep = self.state.get_endpoint(eid)
        if ep is None or ep.network_id != nid:
            raise NotFound(f"endpoint {eid[:12]} not found in network {nid[:12]}")
        return ep

    @staticmethod
    def _segment_opt(options: dict) -> Optional[str]:
        for key in options:
            if key.startswith("secnet.") and key != SEGMENT_OPT:
                raise BadRequest(f"unknown endpoint option {key}: allowed options are {SEGMENT_OPT}")
        if SEGMENT_OPT not in options:
            return None
        value = options[SEGMENT_OPT]
        if not isinstance(value, str):
            raise BadRequest(f"invalid {SEGMENT_OPT} {value!r}: expected a segment name string")
        try:
            return check_segment_name(value, SEGMENT_OPT)
        except PolicyError as exc:
            raise BadRequest(str(exc)) from None

    def _new_endpoint_record(self, net: NetworkRecord, req: CreateEndpointRequest) -> EndpointRecord:
        segment = self._segment_opt(req.options)
        for addr, pools in ((req.ipv4, net.ipv4), (req.ipv6, net.ipv6)):
            if addr and pools and not any(
                    ipaddress.ip_interface(addr).ip in ipaddress.ip_network(p) for p, _ in pools):
                raise BadRequest(f"address {addr} is not in the network's subnets")
        if not req.ipv4 and not req.ipv6:
            raise BadRequest("endpoint has no address: Interface.Address is required")
        host, peer = nl.veth_names(req.endpoint_id)
        mac = req.mac or nl.endpoint_mac(req.ipv4, req.endpoint_id)
        return EndpointRecord(id=req.endpoint_id, network_id=net.id, veth_host=host, veth_peer=peer,
                              mac=mac, ipv4=req.ipv4, ipv6=req.ipv6, segment_opt=segment, segment=segment)

    def create_endpoint(self, req: CreateEndpointRequest) -> dict:
        net = self._network(req.network_id)
        rec = self._new_endpoint_record(net, req)
        with self.lock:
            old = self.state.get_endpoint(rec.id)
            if old is not None:
                rec = old  # a retry: repair and answer the same
            try:
                self._realize_endpoint(net, rec)
                self.state.put_endpoint(rec, durable=False)   # sound: State.put_endpoints says why
            except nl.LinkConflict as exc:   # the name is another's link: leave it, drop our port
                if old is None:
                    self.reconciler.endpoint_removed(net, rec)
                raise Conflict(str(exc)) from None
            except Exception as exc:
                log.exception("create endpoint %s failed", rec.id[:12])
                if old is None:
                    self.links.remove_link(rec.veth_host, owner=rec.id)
                    self.links.remove_neighbours(net.bridge, rec.mac, rec.addresses)
                    self.reconciler.endpoint_removed(net, rec)
                raise Internal(f"cannot create endpoint {rec.id[:12]}: {exc}") from None
        self.resolver.expect(net, rec)   # Join's engine lookup, while dockerd makes the sandbox
        return {} if req.mac else {"Interface": {"MacAddress": rec.mac}}

    def _realize_endpoint(self, net: NetworkRecord, rec: EndpointRecord) -> None:
        """The endpoint's veth pair and its port in the backend, both in place on return.

        eBPF attaches to the veth: the link first. nftables needs only the port's
        addresses: the veth is made on the netlink thread while the port's elements
        (and a new segment's entries) are written here. Nothing can pass meanwhile:
        the container side is down in the host's namespace until Docker moves it at
        Join, so the host side has no carrier and the bridge forwards nothing to it.
        A join that brings a segment writes its policy first, then makes the veth.
        Either way the link writer makes the pair in the network's interface group (or
        moves a claimed one into it) before this returns: the backend asks nothing of
        the link (``grouped``; its own request would wait on the RTNL lock behind the
        pair being made, ~1-2 ms of the verb for nothing).
        """
        args = (rec.veth_host, rec.veth_peer, net.bridge, rec.id, net.mtu, rec.mac, rec.addresses)
        if self.reconciler.link_first(net):
            self.links.ensure_veth(*args)
            self.reconciler.endpoint_changed(net, rec)
            return
        start = getattr(self.links, "start_veth", None)
        if start is None or self.reconciler.brings_segment(net, rec):
            # a new segment's delta is Python work: beside the veth's, both wait on the GIL
            self.reconciler.endpoint_changed(net, rec, grouped=True)
            self.links.ensure_veth(*args)
            return
        veth = start(*args)
        try:
            self.reconciler.endpoint_changed(net, rec, grouped=True)
        finally:
            failed = veth.exception()   # waits: the link is made (or not) before any cleanup
        if failed is not None:
            raise failed

    def endpoint_oper_info(self, req: EndpointRequest) -> dict:
        ep = self._endpoint(req.network_id, req.endpoint_id)
        return {"Value": {"veth": ep.veth_host, "mac": ep.mac, "segment": ep.segment or "",
                          "quarantine": ep.quarantine or ""}}

    def delete_endpoint(self, req: EndpointRequest) -> dict:
        with self.lock:
            ep = self.state.get_endpoint(req.endpoint_id)
            if ep is None:  # a retry: the work is done
                return {}
            net = self.state.get_network(ep.network_id)
            self.ports.release(ep.id)
            self.links.remove_link(ep.veth_host, owner=ep.id)
            if net is not None:
                self.links.remove_neighbours(net.bridge, ep.mac, ep.addresses)
                self.reconciler.endpoint_removed(net, ep)
            self.state.delete_endpoint(ep.id)
        self.resolver.forget(ep)
        return {}

    def join(self, req: EndpointRequest) -> dict:
        net = self._network(req.network_id)
        ep = self._endpoint(req.network_id, req.endpoint_id)
        found = self.resolver.resolve_at_join(net, ep)  # bounded; never waits on a busy engine
        with self.lock:
            # Re-read both: the watcher or a policy edit may have moved on meanwhile.
            net = self._network(req.network_id)
            current = self.state.get_endpoint(ep.id)
            if current is None:
                raise NotFound(f"endpoint {ep.id[:12]} was deleted during join")
            ep = current.evolve(sandbox_key=req.sandbox_key or current.sandbox_key, joined=True)
            if found.segment is not None or found.quarantine is not None:
                ep = ep.evolve(segment=found.segment, quarantine=found.quarantine)
            ep = ep.evolve(container=found.container or ep.container,
                           container_id=found.container_id or ep.container_id)
            self.reconciler.endpoint_changed(net, ep)
            if ep != current:   # a retried Join changes nothing: no write
                self.state.put_endpoint(ep, durable=False)
        resp = {"InterfaceName": {"SrcName": ep.veth_peer, "DstPrefix": "eth"},
                "DisableGatewayService": False}
        if not net.internal:  # each address gets the gateway of its own subnet
            for key, addr in (("Gateway", ep.ipv4), ("GatewayIPv6", ep.ipv6)):
                gw = net.gateway_for(addr)
                if gw:
                    resp[key] = gw
        else:
            routes = net.other_subnets(ep.ipv4) + net.other_subnets(ep.ipv6)
            if routes:   # no gateway: the network's other subnets are on the link (U26-F3)
                resp["StaticRoutes"] = [{"Destination": pool, "RouteType": CONNECTED} for pool in routes]
        return resp

    def apply_resolution(self, endpoint_id, container, container_id, segment, quarantine):
        """Record a container's resolved segment (from the watcher) and enforce it."""
        with self.lock:
            ep = self.state.get_endpoint(endpoint_id)
            if ep is None:
                return
            net = self.state.get_network(ep.network_id)
            ep = ep.evolve(container=container, container_id=container_id,
                           segment=segment if ep.segment_opt is None else ep.segment_opt,
                           quarantine=quarantine if ep.segment_opt is None else None)
            self.reconciler.endpoint_changed(net, ep)
            self.state.put_endpoint(ep)

    def rename_containers(self, names: dict) -> int:
        """Follow `docker rename`: the endpoints of each container id in ``names``
        (id -> current name) take its name. Returns how many changed."""
        with self.lock:
            changed = [ep.evolve(container=names[ep.container_id]) for ep in self.state.endpoints()
                       if ep.container_id in names and ep.container != names[ep.container_id]]
            if changed:
                self.state.put_endpoints(changed)
        for ep in changed:
            log.info("endpoint %s: container renamed to %s", ep.id[:12], ep.container)
        return len(changed)

    def leave(self, req: EndpointRequest) -> dict:
        with self.lock:
            ep = self.state.get_endpoint(req.endpoint_id)
            if ep is None:
                return {}
            self.state.put_endpoint(ep.evolve(joined=False, sandbox_key=None))
        return {}

    def program_external_connectivity(self, req: EndpointRequest) -> dict:
        """Publish the endpoint's ports (`docker run -p`)."""
        net = self._network(req.network_id)
        bindings = parse_portmap(req.options)
        if bindings and net.internal:
            raise BadRequest("network is internal: ports cannot be published")
        with self.lock:
            ep = self._endpoint(req.network_id, req.endpoint_id)
            check_families(bindings, {6 if ":" in a else 4 for a in (ep.ipv4, ep.ipv6) if a})
            published = self.ports.reserve(ep.id, bindings)
            try:
                before, ep = ep, ep.evolve(ports=published)
                self.reconciler.endpoint_changed(net, ep)
                if ep != before:   # nothing published (most runs): no write, no fsync
                    self.state.put_endpoint(ep)
            except Exception as exc:
                self.ports.release(ep.id)
                if isinstance(exc, DriverError):
                    raise
                log.exception("publishing ports of %s failed", ep.id[:12])
                raise Internal(f"cannot publish ports of endpoint {ep.id[:12]}: {exc}") from None
        return {}

    def revoke_external_connectivity(self, req: EndpointRequest) -> dict:
        with self.lock:
            ep = self.state.get_endpoint(req.endpoint_id)
            self.ports.release(req.endpoint_id)
            if ep is None or not ep.ports:
                return {}
            ep = ep.evolve(ports=())
            net = self.state.get_network(ep.network_id)
            if net is not None:
                self.reconciler.endpoint_changed(net, ep)
            self.state.put_endpoint(ep)
        return {}

    # --- live changes (the CLI) -------------------------------------------
    def change_options(self, network_id: str, options, edit=None) -> NetworkRecord:
        """Save ``options`` (validated NetworkOptions: new rules, a new mode), then put them
        in force. ``edit``: the :class:`~segmentation.model.RuleEdit` that made the new
        rules, if one did (the compiler then works on the rules it touched).

        Returns the new record. When this returns, the kernel enforces the
        new options and the flows they deny are ended. Saved first, so that the kernel
        is never ahead of the saved state: a daemon killed in between comes back with
        the new options and puts them in force (U24-F7: applied first, a kill left the
        kernel on options the restarted daemon did not know, and took back). When the
        datapath refuses them, the old record is saved and put in force again, and the error
        raised.
        """
        with self.lock:
            net = self._network(network_id)
            new = net.evolve(options=options)
            if new == net:
                return net
            self.state.put_network(new, edit)
            try:
                self.reconciler.policy_changed(new, edit)
            except BaseException:
                try:
                    self.state.put_network(net)
                    self.reconciler.policy_changed(net)   # whatever part of the new got in, out again
                except Exception as exc:   # the state's options are the next pass's to apply
                    log.error("network %s: cannot go back to the options before a refused change: %s",
                              network_id[:12], exc)
                raise
        return new

    def edit_options(self, network_id: str, change) -> NetworkRecord:
        """``change(options) -> (new options, RuleEdit or None)`` on the network's current
        options, under the driver's lock, then :meth:`change_options`: an edit that starts
        while another is applied sees its result (no edit is lost). Errors ``change``
        raises pass through, with nothing changed."""
        with self.lock:
            options, edit = change(self._network(network_id).options)
            return self.change_options(network_id, options, edit)

    # --- restart ---------------------------------------------------------
    def restore(self) -> dict:
        """Rebuild kernel objects from state and remove what no record owns
        (:func:`plugin.driver.restore.restore`). Returns counts by kind."""
        return restart.restore(self)
