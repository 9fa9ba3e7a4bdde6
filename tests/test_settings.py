"""Settings: every variable parsed once, bad values named with an example."""

from __future__ import annotations

import dataclasses

import pytest

from harness.factories import SECOND_SECRET, SECRET
from relay.errors import ConfigError
from relay.settings import (
    DEFAULT_RETRY_SCHEDULE_S,
    VARIABLES,
    Route,
    ServerSettings,
    Settings,
    Variable,
    parse_duration_s,
    parse_size,
)

BASE = {"CLERK_WEBHOOK_SECRET": SECRET, "CONVEX_SITE_URL": "https://happy-otter-123.convex.site"}


def parse(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env}, dotenv=False)


def test_defaults_follow_the_contract() -> None:
    """Unset variables take the contract's defaults."""
    s = parse()
    assert s.target == "http-action"
    assert s.forward_secret == SECRET
    assert s.payload == "raw"
    assert s.database_url == "sqlite:///data/relay.db"
    assert s.delivery_timeout_s == 10.0
    assert s.concurrency == 4
    assert s.max_body_bytes == 1024 * 1024
    assert s.port == 8000
    assert s.retry_schedule_s == DEFAULT_RETRY_SCHEDULE_S
    assert s.route_for("user.created") == "users:upsertFromClerk"
    assert s.route_for("user.deleted") == "users:deleteFromClerk"
    assert s.route_for("session.created") is None
    assert s.admin_token is None


def test_several_secrets_split_on_spaces_and_commas() -> None:
    """CLERK_WEBHOOK_SECRET may hold several secrets for rotation."""
    s = parse(CLERK_WEBHOOK_SECRET=f"{SECRET}, {SECOND_SECRET}")
    assert s.webhook_secrets == (SECRET, SECOND_SECRET)


def test_target_falls_back_to_mutation_with_convex_url() -> None:
    """With only CONVEX_URL set the target is the function API."""
    s = Settings.from_env(
        {
            "CLERK_WEBHOOK_SECRET": SECRET,
            "CONVEX_URL": "https://x.convex.cloud",
            "CONVEX_DEPLOY_KEY": "prod:x|y",
        },
        dotenv=False,
    )
    assert s.target == "mutation"
    assert s.target_url == "https://x.convex.cloud/api/mutation"
    s.require_delivery()


def test_no_target_is_a_start_up_error_for_delivery() -> None:
    """Neither Convex URL configured: delivery refuses to start, naming the variables."""
    s = Settings.from_env({"CLERK_WEBHOOK_SECRET": SECRET}, dotenv=False)
    with pytest.raises(ConfigError, match="CONVEX_SITE_URL"):
        s.require_delivery()


def test_mutation_target_needs_deploy_key() -> None:
    """RELAY_TARGET=mutation without CONVEX_DEPLOY_KEY is refused."""
    s = parse(RELAY_TARGET="mutation", CONVEX_URL="https://x.convex.cloud")
    with pytest.raises(ConfigError, match="CONVEX_DEPLOY_KEY"):
        s.require_delivery()


def test_missing_secret_names_variable_and_example() -> None:
    """Ingest without a signing secret explains where to find one."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({}, dotenv=False).require_ingest()
    assert err.value.variable == "CLERK_WEBHOOK_SECRET"
    assert "whsec_" in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLERK_WEBHOOK_SECRET", "not-a-secret"),
        ("CONVEX_SITE_URL", "happy-otter.convex.site"),
        ("RELAY_TARGET", "carrier-pigeon"),
        ("RELAY_PAYLOAD", "xml"),
        ("RELAY_ROUTES", "user.created"),
        ("RELAY_ROUTES", "user.created=not a function"),
        ("RELAY_DATABASE_URL", "mysql://x"),
        ("RELAY_DELIVERY_TIMEOUT", "soon"),
        ("RELAY_DELIVERY_TIMEOUT", "0s"),
        ("RELAY_RETRY_SCHEDULE", "5s,later"),
        ("RELAY_CONCURRENCY", "0"),
        ("RELAY_CONCURRENCY", "many"),
        ("RELAY_ADMIN_TOKEN", "short"),
        ("RELAY_MAX_BODY", "1 parsec"),
        ("RELAY_INCLUDE", "passwords"),
        ("PORT", "99999"),
        ("RELAY_METRICS_PORT", "prometheus"),
        ("RELAY_METRICS_PORT", "8000"),  # the default PORT: must differ
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("RELAY_FORWARD_SECRET", "secret"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """Each invalid value raises ConfigError naming its variable, with an example."""
    with pytest.raises(ConfigError) as err:
        parse(**{name: value})
    assert err.value.variable == name
    assert err.value.example


def test_a_metrics_port_is_parsed_and_checked_against_port() -> None:
    assert parse().metrics_port is None
    assert parse(RELAY_METRICS_PORT="9091", PORT="8080").metrics_port == 9091
    with pytest.raises(ConfigError, match="must differ from PORT"):
        parse(RELAY_METRICS_PORT="8080", PORT="8080")


def test_secrets_are_not_in_repr() -> None:
    """repr(settings) never shows a secret, key or token."""
    s = parse(CONVEX_DEPLOY_KEY="prod:x|supersecretkey", RELAY_ADMIN_TOKEN="a" * 32)
    text = repr(s)
    assert SECRET not in text and "supersecretkey" not in text and "a" * 32 not in text


def test_routes_with_globs() -> None:
    """RELAY_ROUTES maps globs to functions, first match wins."""
    s = parse(RELAY_ROUTES="organization.*=orgs:sync; user.*=users:apply")
    assert s.routes == (Route(("organization.*",), "orgs:sync"), Route(("user.*",), "users:apply"))
    assert s.route_for("organization.deleted") == "orgs:sync"
    assert s.route_for("session.created") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("2m", 120), ("1h", 3600), ("3d", 259200), ("7", 7)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations accept ms, s, m, h, d and bare seconds."""
    assert parse_duration_s("X", text) == seconds


@pytest.mark.parametrize(("text", "size"), [("1MiB", 1048576), ("512KiB", 524288), ("100", 100)])
def test_sizes(text: str, size: int) -> None:
    """Sizes accept KiB and MiB."""
    assert parse_size("X", text) == size


def test_issuer_falls_back_to_next_public_variable() -> None:
    """CLERK_ISSUER_URL defaults to NEXT_PUBLIC_CLERK_FRONTEND_API_URL."""
    s = parse(NEXT_PUBLIC_CLERK_FRONTEND_API_URL="https://verb-noun-00.clerk.accounts.dev/")
    assert s.issuer_url == "https://verb-noun-00.clerk.accounts.dev"


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file in the working directory supplies variables the environment lacks."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / ".env").write_text(f"CLERK_WEBHOOK_SECRET={SECRET}\nRELAY_CONCURRENCY=9\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLERK_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("RELAY_CONCURRENCY", "3")  # the real environment wins
    s = Settings.from_env()
    assert s.webhook_secrets == (SECRET,) and s.concurrency == 3


def test_trusted_proxies_parse_and_default() -> None:
    """RELAY_TRUSTED_PROXIES is a small number of hops; 0 (trust none) by default."""
    assert parse().trusted_proxies == 0
    assert parse(RELAY_TRUSTED_PROXIES="1").trusted_proxies == 1


def test_outage_settings_parse_and_default() -> None:
    """The probe gap and the maximum pending age: defaults, durations, bounds."""
    default = Settings.from_env({}, dotenv=False)
    assert (default.probe_interval_max_s, default.max_pending_age_s) == (5.0, 7 * 86400.0)
    s = Settings.from_env(
        {"RELAY_PROBE_INTERVAL_MAX": "30s", "RELAY_MAX_PENDING_AGE": "14d"}, dotenv=False
    )
    assert (s.probe_interval_max_s, s.max_pending_age_s) == (30.0, 14 * 86400.0)
    with pytest.raises(ConfigError, match="RELAY_PROBE_INTERVAL_MAX"):
        Settings.from_env({"RELAY_PROBE_INTERVAL_MAX": "2h"}, dotenv=False)


CLERK_KEY = "sk_test_" + "Zx9" * 12


def test_reconcile_settings_default_to_clerks_api_under_the_development_limit() -> None:
    """Without reconcile variables: Clerk's URL, 9 requests/s (under 100 per 10 s), no key."""
    s = parse()
    assert s.clerk_secret_key is None
    assert s.clerk_api_url == "https://api.clerk.com/v1"
    assert s.clerk_rate_per_s == 9.0
    with pytest.raises(ConfigError) as err:
        s.require_clerk_api()
    assert err.value.variable == "CLERK_SECRET_KEY"


@pytest.mark.parametrize(
    ("text", "per_s"), [("90/10s", 9.0), ("1000/10s", 100.0), ("5", 5.0), ("60/1m", 1.0)]
)
def test_clerk_rate_is_requests_per_duration(text: str, per_s: float) -> None:
    """RELAY_CLERK_RATE reads `N/duration` or a bare per-second number."""
    assert parse(RELAY_CLERK_RATE=text).clerk_rate_per_s == per_s


@pytest.mark.parametrize("text", ["fast", "0/10s", "10/never", "-1"])
def test_a_bad_clerk_rate_is_named(text: str) -> None:
    """A rate that is not positive or not readable stops start-up, naming the variable."""
    with pytest.raises(ConfigError) as err:
        parse(RELAY_CLERK_RATE=text)
    assert err.value.variable == "RELAY_CLERK_RATE"


def test_clerk_secret_key_is_checked_and_never_shown() -> None:
    """CLERK_SECRET_KEY must look like sk_test_/sk_live_; neither repr nor errors show it."""
    s = parse(CLERK_SECRET_KEY=CLERK_KEY, CLERK_API_URL="http://127.0.0.1:9/v1/")
    assert s.clerk_secret_key == CLERK_KEY
    assert s.clerk_api_url == "http://127.0.0.1:9/v1"
    assert CLERK_KEY not in repr(s)
    typo = "pk_test_" + "Zx9" * 12
    with pytest.raises(ConfigError) as err:
        parse(CLERK_SECRET_KEY=typo)
    assert err.value.variable == "CLERK_SECRET_KEY"
    assert typo not in str(err.value)


def test_delivers_follows_events_and_routes() -> None:
    """Only types a configuration delivers count as delivered (others are stored skipped)."""
    http = parse(RELAY_EVENTS="user.*")
    assert http.delivers("user.updated") and not http.delivers("organization.updated")
    mutation = parse(CONVEX_SITE_URL="", CONVEX_URL="https://x.convex.cloud")
    assert mutation.delivers("user.updated") and not mutation.delivers("organization.updated")


def test_the_table_fills_every_field_once() -> None:
    """Each variable fills its own Settings field; only heartbeat_stale_s has no variable."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    filled = [var.field for var in VARIABLES]
    assert len(set(filled)) == len(filled)
    assert fields - set(filled) == {"heartbeat_stale_s"}
    assert set(filled) <= fields
    assert len({var.env for var in VARIABLES}) == len(VARIABLES)


def test_secret_rows_are_the_fields_kept_out_of_repr() -> None:
    """A variable marked secret fills a field repr() leaves out, and no other field is."""
    hidden = {f.name for f in dataclasses.fields(Settings) if not f.repr}
    assert {var.field for var in VARIABLES if var.secret} == hidden


#: Secrets with a shape to check (any text is a Convex deploy key).
CHECKED_SECRETS = [v for v in VARIABLES if v.secret and v.env != "CONVEX_DEPLOY_KEY"]


@pytest.mark.parametrize("var", CHECKED_SECRETS, ids=lambda v: v.env)
def test_a_refused_secret_is_not_echoed(var: Variable) -> None:
    """A secret that fails its check is named by variable, never shown (it may be real)."""
    typo = "pk_live_Zx9"
    with pytest.raises(ConfigError) as err:
        var.parse(var.env, typo)
    assert err.value.variable == var.env
    assert typo not in str(err.value)


def test_server_settings_read_the_process_managers_knobs() -> None:
    """gunicorn's worker count, threads and access log come from their variables."""
    assert ServerSettings.from_env({}) == ServerSettings(None, 1, False)
    s = ServerSettings.from_env(
        {"WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "4", "GUNICORN_ACCESS_LOG": "1"}
    )
    assert s == ServerSettings(web_concurrency=3, gunicorn_threads=4, gunicorn_access_log=True)
    with pytest.raises(ConfigError) as err:
        ServerSettings.from_env({"WEB_CONCURRENCY": "lots"})
    assert err.value.variable == "WEB_CONCURRENCY"
