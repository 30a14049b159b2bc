"""create_app(driver): the HTTP face of the driver.

Thin on purpose: decode the body (Docker sends no JSON content type), build
a typed request, call the driver, encode. Every failure becomes
``{"Err": "..."}`` here and nowhere else: never a stack trace, never HTML.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time

from flask import Flask, Response, request

from plugin.driver import protocol as p
from plugin.errors import DriverError

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

# path -> (request type or None, driver method name)
ROUTES = {
    "/Plugin.Activate": (None, "activate"),
    "/NetworkDriver.GetCapabilities": (None, "capabilities"),
    "/NetworkDriver.CreateNetwork": (p.CreateNetworkRequest, "create_network"),
    "/NetworkDriver.DeleteNetwork": (p.NetworkRequest, "delete_network"),
    "/NetworkDriver.AllocateNetwork": (p.NetworkRequest, "allocate_network"),
    "/NetworkDriver.FreeNetwork": (p.NetworkRequest, "free_network"),
    "/NetworkDriver.CreateEndpoint": (p.CreateEndpointRequest, "create_endpoint"),
    "/NetworkDriver.EndpointOperInfo": (p.EndpointRequest, "endpoint_oper_info"),
    "/NetworkDriver.DeleteEndpoint": (p.EndpointRequest, "delete_endpoint"),
    "/NetworkDriver.Join": (p.EndpointRequest, "join"),
    "/NetworkDriver.Leave": (p.EndpointRequest, "leave"),
    "/NetworkDriver.DiscoverNew": (None, "discover"),
    "/NetworkDriver.DiscoverDelete": (None, "discover"),
    "/NetworkDriver.ProgramExternalConnectivity": (p.EndpointRequest, "program_external_connectivity"),
    "/NetworkDriver.RevokeExternalConnectivity": (p.EndpointRequest, "revoke_external_connectivity"),
}


def _reply(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)


def error_reply(path: str, exc: Exception, content_type: str = CONTENT_TYPE) -> Response:
    """The one mapping of a failure to ``{"Err": ...}``: a DriverError's tagged
    status and message; the state store's errors (sqlite3: a full disk, U24-F2) a 503
    with SQLite's message; anything else a 500 naming only the error's type."""
    if isinstance(exc, DriverError):
        log.warning("%s: %s: %s", path, exc.kind, exc.message)
        body, status = {"Err": exc.message}, exc.status
    elif isinstance(exc, sqlite3.Error):   # the state store (full disk, read-only, locked): say so
        log.error("%s failed: the state store: %s", path, exc)
        body, status = {"Err": f"cannot save or read the daemon's state: {exc}"}, 503
    else:
        log.error("%s failed", path, exc_info=exc)
        body, status = {"Err": f"internal error: {type(exc).__name__}"}, 500
    return Response(json.dumps(body), status=status, content_type=content_type)


def _decode():
    raw = request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise p.BadRequest("request body is not valid JSON") from None
    except RecursionError:   # json's C scanner recurses once per nesting level
        raise p.BadRequest("request body is nested too deeply") from None


def create_app(driver, api=None) -> Flask:
    """The Flask app serving ``driver``; ``api`` (optional) adds the CLI's routes."""
    app = Flask("secnet")

    def handle(path: str) -> Response:
        req_type, method = ROUTES[path]
        try:
            body = _decode()
            if method in ("allocate_network", "free_network"):  # global scope only: nothing to do
                req_type.from_wire(body)
                return _reply({"Options": {}} if method == "allocate_network" else {})
            if method == "discover":
                return _reply({})
            fn = getattr(driver, method)
            started = time.monotonic()
            result = fn(req_type.from_wire(body)) if req_type else fn()
            log.debug("%s took %.1f ms", path, (time.monotonic() - started) * 1000)
            return _reply(result)
        except Exception as exc:  # the one place failures become Err
            return error_reply(path, exc)

    for path in ROUTES:
        app.add_url_rule(path, path, (lambda path=path: handle(path)), methods=["POST"])

    @app.errorhandler(404)
    def not_found(_exc):
        return _reply({"Err": f"unknown endpoint {request.path}"}, 404)

    @app.errorhandler(405)
    def bad_method(_exc):
        return _reply({"Err": f"method {request.method} not allowed on {request.path}"}, 405)

    if api is not None:
        api.register(app)
    return app
