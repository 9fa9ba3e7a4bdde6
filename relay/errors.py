"""Every error the relay raises on purpose, in one tree.

::

    RelayError                      base; never raised itself
    ├── ConfigError                 bad or missing configuration (start-up, CLI exit 2)
    ├── HTTPError                   an error that reaches a client; carries ``status_code``
    │   ├── BadRequest        400   malformed headers or body
    │   ├── Unauthorized      401   signature/token does not match
    │   ├── NotFound          404   unknown route or event
    │   ├── Conflict          409   request valid but not applicable to the event's state
    │   ├── MethodNotAllowed  405   a webhook path asked with another method than POST
    │   ├── RequestTimeout    408   the request body did not arrive in time
    │   ├── PayloadTooLarge   413   body larger than RELAY_MAX_BODY
    │   ├── TooManyRequests   429   admin token guessed too often
    │   │   └── LimitedError  429   a client over its wrong-token budget; carries Retry-After
    │   └── StoreUnavailable  503   the store could not commit; nothing was acknowledged
    ├── StoreError                  the store failed (disk full, locked, connection lost)
    ├── UnsafeValueError            a payload cannot be made a valid Convex value
    ├── NoRoute                     an event type no RELAY_ROUTES entry sends (mutation target)
    ├── TransportError              a delivery attempt got no reply; ``str()`` says why
    │   ├── ConnectionFailed        refused, unresolvable, reset or cut short
    │   └── TimedOut                RELAY_DELIVERY_TIMEOUT passed before the reply
    ├── ClerkAPIError               Clerk's Backend API refused or kept failing (reconcile)
    └── ConvexQueryError            Convex's state could not be read (reconcile)

Errors that reach HTTP, and routing's own 404/405, are rendered by ``relay.web.app`` as
``{"error": <short code>, "detail": <sentence>}``.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error raised by the relay on purpose."""


class ConfigError(RelayError):
    """Raised at start-up (or by the CLI) when a setting is missing or invalid."""

    def __init__(self, variable: str, problem: str, example: str | None = None) -> None:
        self.variable = variable
        self.problem = problem
        self.example = example
        hint = f" (for example {variable}={example})" if example else ""
        super().__init__(f"{variable}: {problem}{hint}")


class HTTPError(RelayError):
    """Raised when a request must be answered with an error status."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class BadRequest(HTTPError):
    """Raised for missing or malformed ``svix-*`` headers, or a body that is not an event."""

    status_code = 400
    code = "bad_request"


class Unauthorized(HTTPError):
    """Raised when no secret verifies the signature, the timestamp is stale, or a token is wrong."""

    status_code = 401
    code = "unauthorized"


class NotFound(HTTPError):
    """Raised for an unknown route or event id."""

    status_code = 404
    code = "not_found"


class Conflict(HTTPError):
    """Raised when an action does not apply to an event's current state."""

    status_code = 409
    code = "conflict"


class MethodNotAllowed(HTTPError):
    """Raised when a webhook path is requested with a method other than POST."""

    status_code = 405
    code = "method_not_allowed"


class RequestTimeout(HTTPError):
    """Raised when a request body is still incomplete at its deadline (a slow client)."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(HTTPError):
    """Raised when a request body is larger than ``RELAY_MAX_BODY``."""

    status_code = 413
    code = "payload_too_large"


class TooManyRequests(HTTPError):
    """Raised when a client guessed the admin token wrong too often."""

    status_code = 429
    code = "too_many_requests"


class LimitedError(TooManyRequests):
    """Raised while a client is over its wrong-token budget; carries ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many wrong admin tokens; try again in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class StoreUnavailable(HTTPError):
    """Raised when an event could not be committed; the sender should retry."""

    status_code = 503
    code = "store_unavailable"


class StoreError(RelayError):
    """Raised by a store when the database fails (disk full, locked too long, connection lost)."""


class UnsafeValueError(RelayError):
    """Raised when a payload breaks a Convex value limit that escaping cannot fix."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason} at {path or '<root>'}")


class ClerkAPIError(RelayError):
    """Raised when Clerk's Backend API answers an error, or keeps failing past the retries."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(detail)


class ConvexQueryError(RelayError):
    """Raised when a Convex state query fails (transport error or a function error)."""

    def __init__(self, detail: str, *, missing_function: bool = False) -> None:
        #: The deployment has no such query (e.g. Convex's official template).
        self.missing_function = missing_function
        super().__init__(detail)


class NoRoute(RelayError):
    """The event type is not routed to any Convex function (the worker skips it)."""


class TransportError(RelayError):
    """No reply: the attempt failed on the way. ``str(exc)`` is the attempts log's reason."""


class ConnectionFailed(TransportError):
    """Refused, unresolvable, reset or closed before a whole reply arrived."""

    def __init__(self, reason: str = "connection failed") -> None:
        super().__init__(reason)


class TimedOut(TransportError):
    """The attempt's deadline (``RELAY_DELIVERY_TIMEOUT``) passed before the reply."""

    def __init__(self, reason: str = "timed out") -> None:
        super().__init__(reason)
