"""Driver errors, each tagged with the kind of failure.

The HTTP layer maps every DriverError to ``{"Err": message}`` in one place;
the tag tells it (and the logs) whether the caller, a missing object or
secnet itself is at fault. Messages are one line and carry no secrets.
"""


class DriverError(Exception):
    """Base of every error a driver verb reports to Docker."""

    kind = "internal"
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(DriverError):
    kind = "bad-request"
    status = 400


class NotFound(DriverError):
    kind = "not-found"
    status = 404


class Conflict(DriverError):
    kind = "conflict"
    status = 409


class Unsupported(DriverError):
    """The engine or host lacks what the request needs (named in the message)."""

    kind = "forbidden"
    status = 403


class Internal(DriverError):
    kind = "internal"
    status = 500
