"""Configuration, read once from the environment (and ``.env``) into a frozen dataclass.

Nothing else in the relay reads ``os.environ``. Tests build :class:`Settings` directly.
:data:`VARIABLES` is the table of every variable: its field, its reader (from
``relay/setting_values.py``) and the README's default and meaning cells, from which the
README's configuration table is rendered (``make docs``). Every invalid value raises
:class:`~relay.errors.ConfigError` naming the variable and showing a valid example, so a
bad deploy stops at start-up with a readable message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from relay import setting_values as value
from relay.errors import ConfigError
from relay.setting_values import (
    DEFAULT_ROUTES_SPEC,
    Route,
    parse_duration_s,
    parse_rate_per_s,
    parse_routes,
    parse_size,
)

# What other modules import from here (the readers among them lived here until
# relay/setting_values.py took them).
__all__ = [
    "DEFAULT_CLERK_API_URL",
    "DEFAULT_CLERK_RATE_PER_S",
    "DEFAULT_RETRY_SCHEDULE_S",
    "DEFAULT_ROUTES_SPEC",
    "SERVER_VARIABLES",
    "VARIABLES",
    "PayloadMode",
    "Route",
    "ServerSettings",
    "Settings",
    "Target",
    "Variable",
    "config_table_markdown",
    "parse_duration_s",
    "parse_rate_per_s",
    "parse_routes",
    "parse_size",
]

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

#: Clerk's Backend API (the seed guide's default; tests point CLERK_API_URL at an emulator).
DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
#: Requests per second to Clerk's Backend API: 90 per 10 s, under the 100 per 10 s a
#: development instance allows (production allows 1,000; raise RELAY_CLERK_RATE there).
DEFAULT_CLERK_RATE_PER_S = 9.0


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

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes)

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


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: where it goes, how it is read, how the README shows it.

    ``default`` and ``doc`` are the README table's Markdown cells; the value a field
    takes when its variable is unset is the dataclass field's default (a test checks
    that every default written as a single value parses to it).
    """

    env: str
    field: str
    parse: value.Parser
    default: str
    doc: str
    #: Kept out of ``repr`` and never echoed in an error (a test holds both to this).
    secret: bool = False
    #: Another variable read when this one is unset (errors still name ``env``).
    fallback: str | None = None


#: Every variable :class:`Settings` reads, in the README's order. ``make docs`` renders
#: the README's configuration table from it; tests/test_readme.py fails when they differ.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "CLERK_WEBHOOK_SECRET", "webhook_secrets", value.webhook_secrets, "required",
        "one or more `whsec_...` signing secrets, separated by spaces or commas",
        secret=True,
    ),
    Variable(
        "CONVEX_SITE_URL", "convex_site_url",
        value.http_url("https://happy-otter-123.convex.site"), "-",
        "`https://<deployment>.convex.site`: deliver to an HTTP action",
    ),
    Variable(
        "CONVEX_WEBHOOK_PATH", "convex_webhook_path", value.url_path, "`/clerk-users-webhook`",
        "path of that HTTP action",
    ),
    Variable(
        "CONVEX_URL", "convex_url", value.http_url("https://happy-otter-123.convex.cloud"), "-",
        "`https://<deployment>.convex.cloud`: deliver through the function API",
    ),
    Variable(
        "CONVEX_DEPLOY_KEY", "convex_deploy_key", value.plain_text, "-",
        "sent as `Authorization: Convex <key>`; needed for internal mutations",
        secret=True,
    ),
    Variable(
        "RELAY_TARGET", "target", value.one_of("http-action", "mutation", example="mutation"),
        "`http-action` if `CONVEX_SITE_URL` is set, else `mutation`",
        "`http-action` or `mutation`",
    ),
    Variable(
        "RELAY_FORWARD_SECRET", "forward_secret",
        value.matching(value.SECRET_RE, "must look like whsec_<base64>", value.EXAMPLE_SECRET),
        "first `CLERK_WEBHOOK_SECRET`",
        "secret the relay signs forwarded HTTP-action requests with",
        secret=True,
    ),
    Variable(
        "RELAY_PAYLOAD", "payload", value.one_of("raw", "normalized", example="normalized"),
        "`raw`", "`raw` (Clerk's bytes) or `normalized`",
    ),
    Variable(
        "RELAY_ROUTES", "routes", value.route_list, "the official Convex template",
        "mutation target: `types=module:function;...`, globs allowed",
    ),
    Variable(
        "RELAY_EVENTS", "events", value.glob_list, "`*`",
        "globs of event types to deliver; others are stored as `skipped`",
    ),
    Variable(
        "RELAY_INCLUDE", "include", value.includable_fields, "-",
        "normalized mode: keep `private_metadata`, `unsafe_metadata`, `event_attributes`",
    ),
    Variable(
        "RELAY_DATABASE_URL", "database_url", value.database_url, "`sqlite:///data/relay.db`",
        "`sqlite:///...` or `postgresql://...`",
    ),
    Variable(
        "RELAY_DELIVERY_TIMEOUT", "delivery_timeout_s",
        value.duration(lambda s: s > 0, "must be positive", "10s"), "`10s`",
        "deadline for a whole attempt (connect, send, reply)",
    ),
    Variable(
        "RELAY_RETRY_SCHEDULE", "retry_schedule_s", value.duration_list,
        "`5s,30s,2m,10m,30m,1h,2h,4h,8h,12h,24h,24h`",
        "gaps between attempts; after the last, `failed`",
    ),
    Variable(
        "RELAY_CONCURRENCY", "concurrency", value.whole_number(1, 256, "4"), "`4`",
        "deliveries in flight per worker",
    ),
    Variable(
        "RELAY_ADMIN_TOKEN", "admin_token", value.admin_token, "unset (admin off)",
        "bearer token for `/admin/*` and the console (≥ 16 characters)",
        secret=True,
    ),
    Variable(
        "RELAY_TRUSTED_PROXIES", "trusted_proxies", value.whole_number(0, 5, "1"), "`0`",
        "proxy hops whose `X-Forwarded-For`/`-Proto` are trusted (`1` on Fly.io)",
    ),
    Variable(
        "RELAY_BACKLOG_WARN", "backlog_warn_s", value.duration(), "`15m`",
        "oldest-pending age that turns the console banner and `/readyz` detail on",
    ),
    Variable(
        "RELAY_PROBE_INTERVAL_MAX", "probe_interval_max_s",
        value.duration(lambda s: 0 < s <= 3600, "must be from 1ms to 1h", "5s"), "`5s`",
        "while Convex is down or misconfigured: the longest gap between probes (they start "
        "1 s apart and double); the first delivery after recovery is at most this late",
    ),
    Variable(
        "RELAY_MAX_PENDING_AGE", "max_pending_age_s", value.duration(), "`7d`",
        "an event still undelivered this long after it arrived fails at its next failed "
        "attempt (attempts while Convex is known down use no retry step)",
    ),
    Variable(
        "CLERK_ISSUER_URL", "issuer_url",
        value.http_url("https://verb-noun-00.clerk.accounts.dev"),
        "`NEXT_PUBLIC_CLERK_FRONTEND_API_URL`",
        "lets normalized users carry `tokenIdentifier`",
        fallback="NEXT_PUBLIC_CLERK_FRONTEND_API_URL",
    ),
    Variable(
        "RELAY_MAX_BODY", "max_body_bytes", parse_size, "`1MiB`", "larger requests get 413"
    ),
    Variable(
        "PORT", "port", value.port_number("8000"), "`8000` (`8080` in the container)", "listen port"
    ),
    Variable(
        "RELAY_METRICS_PORT", "metrics_port", value.port_number("9091"),
        "unset (`/metrics` on `PORT`)",
        "serve `/metrics` on this port only, for a scraper on the private network "
        "(`9091` in `fly.toml`)",
    ),
    Variable(
        "LOG_LEVEL", "log_level",
        value.one_of("debug", "info", "warning", "error", example="info", lower=True),
        "`info`", "`debug`, `info`, `warning`, `error`",
    ),
    Variable(
        "LOG_FORMAT", "log_format", value.one_of("json", "console", example="json"),
        "`json` unless a TTY", "`json` or `console`",
    ),
    Variable(
        "CLERK_SECRET_KEY", "clerk_secret_key",
        # Never echo the value: it may be a real key with a typo.
        value.matching(
            value.CLERK_KEY_RE, "must look like sk_test_... or sk_live_...", "sk_test_..."
        ),
        "-",
        "`sk_test_...`/`sk_live_...` (Dashboard → API Keys): lets `relay reconcile` read "
        "Clerk's Backend API; a secret, never logged",
        secret=True,
    ),
    Variable(
        "CLERK_API_URL", "clerk_api_url", value.http_url(DEFAULT_CLERK_API_URL),
        f"`{DEFAULT_CLERK_API_URL}`", "Clerk's Backend API (tests point it at an emulator)",
    ),
    Variable(
        "RELAY_CLERK_RATE", "clerk_rate_per_s", parse_rate_per_s, "`90/10s`",
        "ceiling on requests to Clerk's Backend API (`N/duration` or per second); Clerk "
        "allows 100/10 s on development instances, 1,000/10 s on production",
    ),
    Variable(
        "RELAY_RECONCILE_EVERY", "reconcile_every_s",
        value.duration(lambda s: s >= 60, "must be at least 1m", "24h"), "unset (off)",
        "e.g. `24h`: workers run `relay reconcile` this often, one at a time (store "
        "lease); needs `CLERK_SECRET_KEY`",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class ServerSettings:
    """The web server's process-manager knobs, read by ``relay/gunicorn_conf.py`` only.

    Not relay configuration (docs/deploy.md describes them, not the README's table) and,
    as before, read from the process environment only, not from ``.env``.
    """

    #: gunicorn workers; None: one per usable CPU, at least two.
    web_concurrency: int | None = None
    #: More than 1 switches to gthread workers with this many threads each.
    gunicorn_threads: int = 1
    #: Add gunicorn's own access line (the app's request line is the canonical one).
    gunicorn_access_log: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSettings:
        """Parse the process environment (or ``env``)."""
        return cls(**_read(SERVER_VARIABLES, os.environ if env is None else env))


SERVER_VARIABLES: tuple[Variable, ...] = (
    Variable(
        "WEB_CONCURRENCY", "web_concurrency", value.integer("4"), "one per CPU, at least 2",
        "gunicorn worker processes",
    ),
    Variable(
        "GUNICORN_THREADS", "gunicorn_threads", value.integer("4"), "`1`",
        "threads per worker; more than 1 means gthread instead of gevent workers",
    ),
    Variable(
        "GUNICORN_ACCESS_LOG", "gunicorn_access_log", value.flag, "off",
        "`1` adds gunicorn's access line",
    ),
)  # fmt: skip


def _read(variables: tuple[Variable, ...], env: Mapping[str, str]) -> dict[str, Any]:
    """The parsed value of each variable that is set (blank counts as unset), by field."""

    def get(name: str) -> str | None:
        text = env.get(name)
        return text.strip() if text and text.strip() else None

    values: dict[str, Any] = {}
    for var in variables:
        text = get(var.env) or (get(var.fallback) if var.fallback else None)
        if text is not None:
            values[var.field] = var.parse(var.env, text)
    return values


def _parse(env: Mapping[str, str]) -> Settings:
    values = _read(VARIABLES, env)
    # The one check across variables: the two listeners cannot share a port.
    metrics_port = values.get("metrics_port")
    if metrics_port is not None and metrics_port == values.get("port", Settings.port):
        raise ConfigError("RELAY_METRICS_PORT", "must differ from PORT", "9091")
    return Settings(**values)


def config_table_markdown(variables: tuple[Variable, ...] = VARIABLES) -> str:
    """The README's configuration table (header and one row per variable), as Markdown."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v.env}` | {v.default} | {v.doc} |" for v in variables]
    return "\n".join(lines) + "\n"
