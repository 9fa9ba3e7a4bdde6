"""Configuration, read once from the environment (and ``.env``) into a frozen dataclass.

Nothing else in the relay reads ``os.environ``. Tests build :class:`Settings` directly.
Every invalid value raises :class:`~relay.errors.ConfigError` naming the variable and
showing a valid example, so a bad deploy stops at start-up with a readable message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from relay.errors import ConfigError
from relay.timeparse import duration_s

Target = Literal["http-action", "mutation"]
PayloadMode = Literal["raw", "normalized"]

#: Gaps between attempts: exponential, jittered upward at run time, spanning > 3 days
#: (Clerk's own Svix schedule gives up after ~27.6 h; the relay outlasts a long outage).
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (
    5,
    30,
    120,
    600,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    86400,
)

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
_SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/=]{8,}$")
_CLERK_KEY_RE = re.compile(r"^sk_(test|live)_[A-Za-z0-9]{8,}$")
#: Clerk's Backend API (the seed guide's default; tests point CLERK_API_URL at an emulator).
DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
#: Requests per second to Clerk's Backend API: 90 per 10 s, under the 100 per 10 s a
#: development instance allows (production allows 1,000; raise RELAY_CLERK_RATE there).
DEFAULT_CLERK_RATE_PER_S = 9.0
_FUNCTION_RE = re.compile(r"^[A-Za-z0-9_/.\-]+:[A-Za-z_][A-Za-z0-9_]*$")
_INCLUDABLE = frozenset({"private_metadata", "event_attributes", "unsafe_metadata"})


@dataclass(frozen=True, slots=True)
class Route:
    """Event types (globs) delivered to one Convex function on the mutation target."""

    globs: tuple[str, ...]
    function: str


@dataclass(frozen=True)
class Settings:
    """Everything the relay is configured with. Secrets are kept out of ``repr``."""

    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    convex_site_url: str | None = None
    convex_webhook_path: str = "/clerk-users-webhook"
    convex_url: str | None = None
    convex_deploy_key: str | None = field(default=None, repr=False)
    target: Target | None = None
    forward_secret: str | None = field(default=None, repr=False)
    payload: PayloadMode = "raw"
    routes: tuple[Route, ...] = ()
    events: tuple[str, ...] = ("*",)
    database_url: str = "sqlite:///data/relay.db"
    delivery_timeout_s: float = 10.0
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    concurrency: int = 4
    admin_token: str | None = field(default=None, repr=False)
    issuer_url: str | None = None
    include: frozenset[str] = frozenset()
    max_body_bytes: int = 1024 * 1024
    port: int = 8000
    #: A second port that serves only /metrics (then not served on ``port``): reachable
    #: by an in-cluster scraper, not through the public proxy.
    metrics_port: int | None = None
    log_level: str = "info"
    log_format: Literal["json", "console"] | None = None
    #: Proxies in front of the relay whose X-Forwarded-For is trusted (Fly: 1). Only
    #: then is the client address (admin rate limit, logs) the real client's.
    trusted_proxies: int = 0
    #: Age of the oldest pending event above which /readyz and the console warn.
    backlog_warn_s: float = 900.0
    #: A worker whose last heartbeat is older than this is taken to be dead.
    heartbeat_stale_s: float = 30.0
    #: While the target is down or misconfigured, one probe this often at most (the
    #: gap starts at a second and doubles up to this): the first delivery after
    #: Convex comes back is at most this late.
    probe_interval_max_s: float = 5.0
    #: An event still undelivered this long after it arrived fails at its next failed
    #: attempt, whatever the reason (Svix itself gives up on an endpoint after 5 days).
    max_pending_age_s: float = 7 * 86400.0
    #: Clerk Backend API secret key (``sk_test_``/``sk_live_``): only ``relay reconcile``.
    clerk_secret_key: str | None = field(default=None, repr=False)
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    #: Ceiling on requests per second to Clerk's Backend API (never exceeded, 429 or not).
    clerk_rate_per_s: float = DEFAULT_CLERK_RATE_PER_S
    #: Run a reconcile this often from the delivery workers (one at a time, by lease);
    #: None: only when asked (CLI, admin API).
    reconcile_every_s: float | None = None

    def __post_init__(self) -> None:
        if not self.routes:
            object.__setattr__(self, "routes", parse_routes(DEFAULT_ROUTES_SPEC))
        if self.forward_secret is None and self.webhook_secrets:
            object.__setattr__(self, "forward_secret", self.webhook_secrets[0])
        if self.target is None:
            if self.convex_site_url:
                object.__setattr__(self, "target", "http-action")
            elif self.convex_url:
                object.__setattr__(self, "target", "mutation")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Parse the environment (plus ``./.env`` unless ``dotenv=False``)."""
        if env is None:
            if dotenv:
                from dotenv import dotenv_values

                file_values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
                env = {**file_values, **os.environ}
            else:
                env = dict(os.environ)
        return _parse(env)

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # Checks for the roles a process plays; read-only CLI commands need neither.
    def require_ingest(self) -> None:
        """Raise unless this process can verify webhooks."""
        if not self.webhook_secrets:
            raise ConfigError(
                "CLERK_WEBHOOK_SECRET",
                "is required: the signing secret of your Clerk webhook endpoint "
                "(Clerk dashboard -> Webhooks -> endpoint -> Signing Secret)",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )

    def require_delivery(self) -> None:
        """Raise unless this process knows where and how to deliver."""
        if self.target is None:
            raise ConfigError(
                "CONVEX_SITE_URL",
                "no delivery target: set CONVEX_SITE_URL (HTTP action) "
                "or CONVEX_URL + CONVEX_DEPLOY_KEY (function API)",
                "https://happy-otter-123.convex.site",
            )
        if self.target == "http-action":
            if not self.convex_site_url:
                raise ConfigError(
                    "CONVEX_SITE_URL",
                    "is required for RELAY_TARGET=http-action",
                    "https://happy-otter-123.convex.site",
                )
            if not self.forward_secret:
                raise ConfigError(
                    "RELAY_FORWARD_SECRET",
                    "is required to sign forwarded requests (defaults to the first "
                    "CLERK_WEBHOOK_SECRET)",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                )
        if self.target == "mutation":
            if not self.convex_url:
                raise ConfigError(
                    "CONVEX_URL",
                    "is required for RELAY_TARGET=mutation",
                    "https://happy-otter-123.convex.cloud",
                )
            if not self.convex_deploy_key:
                raise ConfigError(
                    "CONVEX_DEPLOY_KEY",
                    "is required for RELAY_TARGET=mutation (internal functions need it)",
                    "prod:happy-otter-123|eyJ2...",
                )

    def require_clerk_api(self) -> None:
        """Raise unless this process can read Clerk's Backend API (``relay reconcile``)."""
        if not self.clerk_secret_key:
            raise ConfigError(
                "CLERK_SECRET_KEY",
                "is required to read users from Clerk's Backend API "
                "(Clerk dashboard -> API Keys -> Secret keys)",
                "sk_test_...",
            )

    @property
    def can_read_convex(self) -> bool:
        """Whether Convex's state can be queried (function API URL and deploy key)."""
        return bool(self.convex_url and self.convex_deploy_key)

    @property
    def target_url(self) -> str:
        """Where deliveries go, for logs and the attempts log (no secrets in it)."""
        if self.target == "http-action":
            return f"{(self.convex_site_url or '').rstrip('/')}{self.convex_webhook_path}"
        return f"{(self.convex_url or '').rstrip('/')}/api/mutation"

    def delivers(self, event_type: str) -> bool:
        """Whether events of this type are delivered (else stored as ``skipped``)."""
        from relay.models import matches_any

        if not matches_any(event_type, self.events):
            return False
        return self.target != "mutation" or self.route_for(event_type) is not None

    def route_for(self, event_type: str) -> str | None:
        """The Convex function an event type goes to on the mutation target, if any."""
        from relay.models import matches_any

        for route in self.routes:
            if matches_any(event_type, route.globs):
                return route.function
        return None


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


def _parse(env: Mapping[str, str]) -> Settings:
    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else None

    kw: dict[str, object] = {}
    if secrets := get("CLERK_WEBHOOK_SECRET"):
        parts = _split(secrets)
        for s in parts:
            if not _SECRET_RE.match(s):
                raise ConfigError(
                    "CLERK_WEBHOOK_SECRET",
                    "each secret must look like whsec_<base64> (several: separate with spaces "
                    "or commas)",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                )
        kw["webhook_secrets"] = tuple(parts)
    if v := get("CONVEX_SITE_URL"):
        kw["convex_site_url"] = _url("CONVEX_SITE_URL", v, "https://happy-otter-123.convex.site")
    if v := get("CONVEX_WEBHOOK_PATH"):
        kw["convex_webhook_path"] = v if v.startswith("/") else f"/{v}"
    if v := get("CONVEX_URL"):
        kw["convex_url"] = _url("CONVEX_URL", v, "https://happy-otter-123.convex.cloud")
    if v := get("CONVEX_DEPLOY_KEY"):
        kw["convex_deploy_key"] = v
    if v := get("RELAY_TARGET"):
        if v not in ("http-action", "mutation"):
            raise ConfigError("RELAY_TARGET", f"{v!r} is not http-action or mutation", "mutation")
        kw["target"] = v
    if v := get("RELAY_FORWARD_SECRET"):
        if not _SECRET_RE.match(v):
            raise ConfigError(
                "RELAY_FORWARD_SECRET",
                "must look like whsec_<base64>",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
        kw["forward_secret"] = v
    if v := get("RELAY_PAYLOAD"):
        if v not in ("raw", "normalized"):
            raise ConfigError("RELAY_PAYLOAD", f"{v!r} is not raw or normalized", "normalized")
        kw["payload"] = v
    if v := get("RELAY_ROUTES"):
        kw["routes"] = parse_routes(v)
    if v := get("RELAY_EVENTS"):
        kw["events"] = tuple(_split(v))
    if v := get("RELAY_DATABASE_URL"):
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(
                "RELAY_DATABASE_URL",
                f"unsupported URL {v.split('://')[0]!r}",
                "sqlite:///data/relay.db",
            )
        kw["database_url"] = v
    if v := get("RELAY_DELIVERY_TIMEOUT"):
        timeout_s = parse_duration_s("RELAY_DELIVERY_TIMEOUT", v)
        kw["delivery_timeout_s"] = timeout_s
        if timeout_s <= 0:
            raise ConfigError("RELAY_DELIVERY_TIMEOUT", "must be positive", "10s")
    if v := get("RELAY_RETRY_SCHEDULE"):
        kw["retry_schedule_s"] = tuple(
            parse_duration_s("RELAY_RETRY_SCHEDULE", p) for p in v.split(",") if p.strip()
        )
    if v := get("RELAY_CONCURRENCY"):
        if not v.isdigit() or not 1 <= int(v) <= 256:
            raise ConfigError("RELAY_CONCURRENCY", f"{v!r} is not a number from 1 to 256", "4")
        kw["concurrency"] = int(v)
    if v := get("RELAY_ADMIN_TOKEN"):
        if len(v) < 16:
            raise ConfigError(
                "RELAY_ADMIN_TOKEN",
                "is too short (at least 16 characters)",
                "$(openssl rand -hex 32)",
            )
        kw["admin_token"] = v
    if v := get("CLERK_ISSUER_URL") or get("NEXT_PUBLIC_CLERK_FRONTEND_API_URL"):
        kw["issuer_url"] = _url("CLERK_ISSUER_URL", v, "https://verb-noun-00.clerk.accounts.dev")
    if v := get("RELAY_INCLUDE"):
        names = frozenset(_split(v))
        if unknown := names - _INCLUDABLE:
            raise ConfigError(
                "RELAY_INCLUDE",
                f"unknown field(s) {sorted(unknown)}; choose from {sorted(_INCLUDABLE)}",
                "private_metadata",
            )
        kw["include"] = names
    if v := get("RELAY_MAX_BODY"):
        kw["max_body_bytes"] = parse_size("RELAY_MAX_BODY", v)
    if v := get("PORT"):
        if not v.isdigit() or not 0 < int(v) < 65536:
            raise ConfigError("PORT", f"{v!r} is not a port number", "8000")
        kw["port"] = int(v)
    if v := get("RELAY_METRICS_PORT"):
        if not v.isdigit() or not 0 < int(v) < 65536:
            raise ConfigError("RELAY_METRICS_PORT", f"{v!r} is not a port number", "9091")
        if int(v) == kw.get("port", Settings.port):
            raise ConfigError("RELAY_METRICS_PORT", "must differ from PORT", "9091")
        kw["metrics_port"] = int(v)
    if v := get("LOG_LEVEL"):
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("LOG_LEVEL", f"{v!r} is not debug, info, warning or error", "info")
        kw["log_level"] = v.lower()
    if v := get("LOG_FORMAT"):
        if v not in ("json", "console"):
            raise ConfigError("LOG_FORMAT", f"{v!r} is not json or console", "json")
        kw["log_format"] = v
    if v := get("RELAY_TRUSTED_PROXIES"):
        if not v.isdigit() or int(v) > 5:
            raise ConfigError("RELAY_TRUSTED_PROXIES", f"{v!r} is not a number from 0 to 5", "1")
        kw["trusted_proxies"] = int(v)
    if v := get("RELAY_BACKLOG_WARN"):
        kw["backlog_warn_s"] = parse_duration_s("RELAY_BACKLOG_WARN", v)
    if v := get("RELAY_PROBE_INTERVAL_MAX"):
        kw["probe_interval_max_s"] = parse_duration_s("RELAY_PROBE_INTERVAL_MAX", v)
        if not 0 < kw["probe_interval_max_s"] <= 3600:  # type: ignore[operator]
            raise ConfigError("RELAY_PROBE_INTERVAL_MAX", "must be from 1ms to 1h", "5s")
    if v := get("RELAY_MAX_PENDING_AGE"):
        kw["max_pending_age_s"] = parse_duration_s("RELAY_MAX_PENDING_AGE", v)
    if v := get("CLERK_SECRET_KEY"):
        if not _CLERK_KEY_RE.match(v):
            # Never echo the value: it may be a real key with a typo.
            raise ConfigError(
                "CLERK_SECRET_KEY", "must look like sk_test_... or sk_live_...", "sk_test_..."
            )
        kw["clerk_secret_key"] = v
    if v := get("CLERK_API_URL"):
        kw["clerk_api_url"] = _url("CLERK_API_URL", v, DEFAULT_CLERK_API_URL)
    if v := get("RELAY_CLERK_RATE"):
        kw["clerk_rate_per_s"] = parse_rate_per_s("RELAY_CLERK_RATE", v)
    if v := get("RELAY_RECONCILE_EVERY"):
        every_s = parse_duration_s("RELAY_RECONCILE_EVERY", v)
        if every_s < 60:
            raise ConfigError("RELAY_RECONCILE_EVERY", "must be at least 1m", "24h")
        kw["reconcile_every_s"] = every_s
    return Settings(**kw)  # type: ignore[arg-type]
