"""What the text of one setting may be, and how it is read into a value.

A reader takes ``(variable, text)``: the variable's name and its stripped, non-empty
text. It returns the value or raises :class:`~relay.errors.ConfigError` naming the
variable and showing a valid example. ``relay/settings.py`` gives each row of its table
of variables one reader; ``parse_duration_s`` and its siblings are also used on their
own (CLI flags, the harness). Readers of secrets never echo the text they refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.errors import ConfigError
from relay.timeparse import duration_s

#: Convex's official Clerk template (docs.convex.dev/auth/database-auth).
DEFAULT_ROUTES_SPEC = (
    "user.created,user.updated=users:upsertFromClerk;user.deleted=users:deleteFromClerk"
)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
}
SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/=]{8,}$")
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - an example, not a secret
CLERK_KEY_RE = re.compile(r"^sk_(test|live)_[A-Za-z0-9]{8,}$")
_FUNCTION_RE = re.compile(r"^[A-Za-z0-9_/.\-]+:[A-Za-z_][A-Za-z0-9_]*$")
_INCLUDABLE = frozenset({"private_metadata", "event_attributes", "unsafe_metadata"})


@dataclass(frozen=True, slots=True)
class Route:
    """Event types (globs) delivered to one Convex function on the mutation target."""

    globs: tuple[str, ...]
    function: str


def parse_duration_s(variable: str, text: str) -> float:
    """``500ms``, ``10s``, ``2m``, ``1h``, ``3d`` (a bare number is seconds)."""
    try:
        return duration_s(text)
    except ValueError:
        raise ConfigError(variable, f"{text!r} is not a duration", "10s") from None


def parse_rate_per_s(variable: str, text: str) -> float:
    """``90/10s`` (requests per duration) or ``9`` (per second), as requests per second."""
    count, sep, per = text.partition("/")
    try:
        n = float(count)
    except ValueError:
        raise ConfigError(variable, f"{text!r} is not a rate", "90/10s") from None
    window_s = parse_duration_s(variable, per) if sep else 1.0
    if n <= 0 or window_s <= 0:
        raise ConfigError(variable, "must be positive", "90/10s")
    return n / window_s


def parse_size(variable: str, text: str) -> int:
    """``1MiB``, ``512KiB``, ``65536`` (bytes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(variable, f"{text!r} is not a size", "1MiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_routes(text: str, variable: str = "RELAY_ROUTES") -> tuple[Route, ...]:
    """``types=module:function;types=module:function``; types are comma-separated globs."""
    routes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        types, sep, function = part.partition("=")
        globs = tuple(t.strip() for t in types.split(",") if t.strip())
        if not sep or not globs or not _FUNCTION_RE.match(function.strip()):
            raise ConfigError(variable, f"cannot read route {part!r}", DEFAULT_ROUTES_SPEC)
        routes.append(Route(globs, function.strip()))
    if not routes:
        raise ConfigError(variable, "names no route", DEFAULT_ROUTES_SPEC)
    return tuple(routes)


def _split(text: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", text.strip()) if p]


def _url(variable: str, text: str, example: str) -> str:
    if not re.match(r"^https?://[^\s/]+", text):
        raise ConfigError(variable, f"{text!r} is not an http(s) URL", example)
    return text.rstrip("/")


# --- readers for the table: a few shapes, so that a row says what it accepts in one
# expression ---------------------------------------------------------------------------
#: ``(variable, text) -> value``; the value's type is the field's the row fills.
Parser = Callable[[str, str], Any]


def plain_text(_variable: str, text: str) -> str:
    """Any text, as it is."""
    return text


def one_of(*choices: str, example: str, lower: bool = False) -> Parser:
    """One word from a fixed list (``lower``: compared and kept in lower case)."""
    listed = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def parse(variable: str, text: str) -> str:
        value = text.lower() if lower else text
        if value not in choices:
            raise ConfigError(variable, f"{text!r} is not {listed}", example)
        return value

    return parse


def whole_number(low: int, high: int, example: str) -> Parser:
    """Digits only, from ``low`` to ``high`` inclusive."""

    def parse(variable: str, text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ConfigError(variable, f"{text!r} is not a number from {low} to {high}", example)
        return int(text)

    return parse


def port_number(example: str) -> Parser:
    """A TCP port, 1 to 65535."""

    def parse(variable: str, text: str) -> int:
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigError(variable, f"{text!r} is not a port number", example)
        return int(text)

    return parse


def duration(
    valid: Callable[[float], bool] = lambda _s: True, problem: str = "", example: str = ""
) -> Parser:
    """A duration (:func:`parse_duration_s`) that ``valid`` accepts, else ``problem``."""

    def parse(variable: str, text: str) -> float:
        seconds = parse_duration_s(variable, text)
        if not valid(seconds):
            raise ConfigError(variable, problem, example)
        return seconds

    return parse


def matching(pattern: re.Pattern[str], problem: str, example: str) -> Parser:
    """A value (a secret: never echoed in the error) that matches ``pattern``."""

    def parse(variable: str, text: str) -> str:
        if not pattern.match(text):
            raise ConfigError(variable, problem, example)
        return text

    return parse


def http_url(example: str) -> Parser:
    """An ``http(s)://`` URL, kept without its trailing slash."""
    return lambda variable, text: _url(variable, text, example)


def webhook_secrets(variable: str, text: str) -> tuple[str, ...]:
    """One or more ``whsec_`` secrets, separated by spaces or commas (never echoed)."""
    parts = _split(text)
    for s in parts:
        if not SECRET_RE.match(s):
            raise ConfigError(
                variable,
                "each secret must look like whsec_<base64> (several: separate with spaces "
                "or commas)",
                EXAMPLE_SECRET,
            )
    return tuple(parts)


def url_path(_variable: str, text: str) -> str:
    """A URL path; the leading slash is optional."""
    return text if text.startswith("/") else f"/{text}"


def route_list(variable: str, text: str) -> tuple[Route, ...]:
    """:func:`parse_routes` in the readers' argument order."""
    return parse_routes(text, variable)


def glob_list(_variable: str, text: str) -> tuple[str, ...]:
    """Globs separated by spaces or commas."""
    return tuple(_split(text))


def includable_fields(variable: str, text: str) -> frozenset[str]:
    """Names of Clerk fields normalized events drop unless asked to keep them."""
    names = frozenset(_split(text))
    if unknown := names - _INCLUDABLE:
        raise ConfigError(
            variable,
            f"unknown field(s) {sorted(unknown)}; choose from {sorted(_INCLUDABLE)}",
            "private_metadata",
        )
    return names


def database_url(variable: str, text: str) -> str:
    """A URL of a store the relay has a backend for."""
    if not text.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            variable, f"unsupported URL {text.split('://')[0]!r}", "sqlite:///data/relay.db"
        )
    return text


def duration_list(variable: str, text: str) -> tuple[float, ...]:
    """Comma-separated durations, in seconds."""
    return tuple(parse_duration_s(variable, p) for p in text.split(",") if p.strip())


def admin_token(variable: str, text: str) -> str:
    """A bearer token long enough not to be guessed (never echoed)."""
    if len(text) < 16:
        raise ConfigError(
            variable, "is too short (at least 16 characters)", "$(openssl rand -hex 32)"
        )
    return text


def integer(example: str) -> Parser:
    """Any integer ``int()`` reads (gunicorn checks the range itself)."""

    def parse(variable: str, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(variable, f"{text!r} is not a whole number", example) from None

    return parse


def flag(_variable: str, text: str) -> bool:
    """``1`` is on; anything else is off."""
    return text == "1"
