"""Which endpoints outlived their containers: the catch-up's decision, pure.

Docker calls DeleteEndpoint once, when the container stops or goes; while the
daemon is down that call fails and the engine forgets the endpoint anyway, so
after a restart the state holds endpoints the engine no longer has:

* the container was removed (``docker rm -f``): ``/containers/json?all=1``
  does not list it;
* it was started again with a new endpoint: the network lists the container
  with another ``EndpointID``;
* it was stopped (``docker stop``, or it exited): the container is listed
  (state ``exited``) but ``GET /networks/{id}`` has no entry for it nor for
  the endpoint (U13-F1).

What ``GET /networks/{id}`` lists under ``Containers`` (moby 20.10,
``buildDetailedNetworkResources``): every endpoint of the network's store,
keyed by its sandbox's container id once it joined, else ``ep-<endpoint id>``
(a container still starting: CreateEndpoint and Join come before the start
finishes), each entry with its ``EndpointID``. An endpoint the engine lists
under any key stays. Only endpoints that had a container id are judged (the
caller's ``known``): secnet sets it from that same listing, at Join or by the
watcher, so each judged endpoint was listed once and an endpoint whose Join is
in flight is never taken for gone. A container that is running or paused but
whose endpoint the network does not list is odd; its endpoint stays (a removal
would cut a running container) and the caller logs it.
"""
from __future__ import annotations

from typing import Iterable, Optional

ACTIVE = frozenset(("running", "paused"))   # the states in which a container has its network


def listed_endpoints(members: dict) -> set:
    """Endpoint ids the engine's network ``members`` (``Containers`` of
    ``GET /networks/{id}``) name, by ``EndpointID`` or by an ``ep-`` key."""
    found = {entry.get("EndpointID") for entry in members.values() if isinstance(entry, dict)}
    found.update(key[3:] for key in members if key.startswith("ep-"))
    found.discard(None)
    return found


def why_gone(ep, members: dict, states: dict) -> Optional[str]:
    """Why endpoint ``ep`` (an EndpointRecord with a container id) outlived its
    container, or None when the engine may still use it.

    ``members``: the network's ``Containers`` as the engine lists them;
    ``states``: container id -> ``State`` of every container the engine lists
    (``/containers/json?all=1``: ``created``, ``running``, ``paused``,
    ``restarting``, ``removing``, ``exited``, ``dead``)."""
    if ep.id in listed_endpoints(members):
        return None
    cid = ep.container_id
    if cid not in states:
        return "its container is gone"
    other = (members.get(cid) or {}).get("EndpointID")
    if other:
        return f"its container has endpoint {other[:12]} now"
    if states[cid] in ACTIVE:
        return None
    return f"its container is {states[cid] or 'not running'} and the network lists no endpoint for it"


def outlived(eps: Iterable, members: dict, states: dict) -> list:
    """``[(endpoint, why)]`` of the endpoints in ``eps`` that outlived their
    containers (see :func:`why_gone`), in the order given."""
    gone = []
    for ep in eps:
        why = why_gone(ep, members, states)
        if why is not None:
            gone.append((ep, why))
    return gone


def unlisted_but_active(eps: Iterable, members: dict, states: dict) -> list:
    """Endpoints of running (or paused) containers that the network does not
    list: kept, but worth a log line."""
    listed = listed_endpoints(members)
    return [ep for ep in eps if ep.id not in listed and states.get(ep.container_id) in ACTIVE
            and not (members.get(ep.container_id) or {}).get("EndpointID")]
