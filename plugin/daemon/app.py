"""create_app(driver): the HTTP face of the driver.

Thin on purpose: decode the body (Docker sends no JSON content type), build
a typed request, call the driver, encode. Every failure becomes
``{"Err": "..."}`` here and nowhere else: never a stack trace, never HTML.

The remote-driver routes (``ROUTES``: what dockerd calls, e.g. four requests per
``docker run``) are answered by plain WSGI before Flask (:func:`driver_wsgi`): Flask's
request context, URL map and Response object cost ~0.4 ms of CPU per request for a
POST whose path is looked up in a dict (bench/verbs.py). Everything else -- the
CLI's ``/secnet/...`` routes, unknown paths (404), other methods (405) -- is Flask's.
"""
from __future__ import annotations

import json
import logging
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


def error_body(path: str, exc: Exception) -> tuple:
    """The one mapping of a failure to ``(status, {"Err": ...})``: a DriverError's tagged
    status and message, anything else a 500 naming only the error's type."""
    if isinstance(exc, DriverError):
        log.warning("%s: %s: %s", path, exc.kind, exc.message)
        return exc.status, {"Err": exc.message}
    log.error("%s failed", path, exc_info=exc)
    return 500, {"Err": f"internal error: {type(exc).__name__}"}


def error_reply(path: str, exc: Exception, content_type: str = CONTENT_TYPE) -> Response:
    """:func:`error_body` as a Flask Response (the CLI's routes)."""
    status, body = error_body(path, exc)
    return Response(json.dumps(body), status=status, content_type=content_type)


def _decode(raw: bytes):
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise p.BadRequest("request body is not valid JSON") from None
    except RecursionError:   # json's C scanner recurses once per nesting level
        raise p.BadRequest("request body is nested too deeply") from None


def handle(driver, path: str, raw: bytes) -> tuple:
    """``(status, body dict)`` of the driver's route ``path`` for the request body ``raw``."""
    req_type, method = ROUTES[path]
    try:
        body = _decode(raw)
        if method in ("allocate_network", "free_network"):  # global scope only: nothing to do
            req_type.from_wire(body)
            return 200, ({"Options": {}} if method == "allocate_network" else {})
        if method == "discover":
            return 200, {}
        fn = getattr(driver, method)
        started = time.monotonic()
        result = fn(req_type.from_wire(body)) if req_type else fn()
        log.debug("%s took %.1f ms", path, (time.monotonic() - started) * 1000)
        return 200, result
    except Exception as exc:  # the one place failures become Err
        return error_body(path, exc)


_REASONS = {200: "200 OK", 400: "400 BAD REQUEST", 403: "403 FORBIDDEN", 404: "404 NOT FOUND",
            409: "409 CONFLICT", 500: "500 INTERNAL SERVER ERROR", 501: "501 NOT IMPLEMENTED"}


def driver_wsgi(driver, fallback):
    """A WSGI app answering a POST to a path of ``ROUTES`` itself (:func:`handle`) and
    passing every other request to ``fallback`` (the Flask app's own WSGI callable)."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ROUTES or environ.get("REQUEST_METHOD") != "POST":
            return fallback(environ, start_response)
        status, body = handle(driver, path, _read_body(environ))
        data = json.dumps(body).encode()
        start_response(_REASONS.get(status, f"{status} ERROR"),
                       [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(data)))])
        return [data]
    return app


def _read_body(environ) -> bytes:
    """The request body: CONTENT_LENGTH bytes, or all of it when no length was sent (the
    server decodes a chunked body into ``wsgi.input``)."""
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    return stream.read(length) if length >= 0 else stream.read()


def _reply(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)


def create_app(driver, api=None) -> Flask:
    """The Flask app serving ``driver``; ``api`` (optional) adds the CLI's routes."""
    app = Flask("secnet")
    app.wsgi_app = driver_wsgi(driver, app.wsgi_app)

    def flask_handle(path: str) -> Response:   # only reached when driver_wsgi is bypassed
        status, body = handle(driver, path, request.get_data(cache=False))
        return _reply(body, status)

    for path in ROUTES:   # (Flask keeps them for its 405 on other methods)
        app.add_url_rule(path, path, (lambda path=path: flask_handle(path)), methods=["POST"])

    @app.errorhandler(404)
    def not_found(_exc):
        return _reply({"Err": f"unknown endpoint {request.path}"}, 404)

    @app.errorhandler(405)
    def bad_method(_exc):
        return _reply({"Err": f"method {request.method} not allowed on {request.path}"}, 405)

    if api is not None:
        api.register(app)
    return app
