"""What the console may show of a payload: private fields and secret-looking values removed.

Pure functions, no Flask. The console renders Clerk's stored body for an operator, but
an operator screen is still a screen: fields Clerk marks private, request metadata
about end users, one-time codes and anything shaped like a credential are replaced by
:data:`REDACTED`, as is every secret the relay itself is configured with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"

#: Clerk fields that are private by design (backend-only metadata, end-user request data).
PRIVATE_KEYS = frozenset({"private_metadata", "event_attributes", "unsafe_metadata"})

#: Keys whose (non-boolean) values are credentials or one-time codes.
_SECRET_KEY = re.compile(
    r"secret|token|passw|api[_-]?key|private[_-]?key|authorization|cookie|signature"
    r"|credential|otp_code",
    re.IGNORECASE,
)

#: Values that look like credentials wherever they appear inside a string.
_SECRET_VALUE = re.compile(
    r"whsec_[A-Za-z0-9+/=]{8,}"  # Svix/Clerk webhook signing secrets
    r"|\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"  # Clerk/Stripe secret keys
    r"|\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\b(?:prod|dev|preview|project):[A-Za-z0-9_-]+\|[A-Za-z0-9+/=_.-]{8,}"  # Convex deploy keys
    r"|Bearer\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)

#: Known secrets shorter than this are not searched for inside text (too many false hits).
_MIN_KNOWN_LEN = 4


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with known secrets and credential-shaped substrings replaced."""
    for secret in sorted({k for k in known if len(k) >= _MIN_KNOWN_LEN}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(value: Any, known: Iterable[str] = ()) -> Any:
    """A copy of a JSON value that is safe to show; one-time codes vanish from text too."""
    known_all = [*known, *_one_time_codes(value)]
    return _walk(value, known_all)


def _walk(value: Any, known: list[str]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in PRIVATE_KEYS or (
                _SECRET_KEY.search(str(key)) and item is not None and not isinstance(item, bool)
            ):
                out[key] = REDACTED
            else:
                out[key] = _walk(item, known)
        return out
    if isinstance(value, list):
        return [_walk(item, known) for item in value]
    if isinstance(value, str):
        return redact_text(value, known)
    return value


def _one_time_codes(value: Any) -> list[str]:
    """``otp_code`` values, so the code also vanishes from the email/SMS text that carries it."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            code = item.get("otp_code")
            if isinstance(code, str | int) and not isinstance(code, bool) and str(code):
                found.append(str(code))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
