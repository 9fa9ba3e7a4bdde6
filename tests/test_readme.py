"""The README's promises checked against the code, so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from relay.settings import (
    DEFAULT_RETRY_SCHEDULE_S,
    Settings,
    parse_duration_s,
    parse_rate_per_s,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS_SOURCE = (ROOT / "relay" / "settings.py").read_text()


def _table() -> dict[str, tuple[str, str]]:
    block = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_config_table_lists_exactly_the_variables_settings_reads() -> None:
    """Every variable settings.py reads is documented, and nothing else is."""
    read = set(re.findall(r'get\("([A-Z_]+)"\)', SETTINGS_SOURCE))
    assert read, "settings.py reads no variables?"
    # The fallback for CLERK_ISSUER_URL is documented in that row's default.
    fallbacks = {"NEXT_PUBLIC_CLERK_FRONTEND_API_URL"}
    assert set(_table()) == read - fallbacks
    assert "NEXT_PUBLIC_CLERK_FRONTEND_API_URL" in _table()["CLERK_ISSUER_URL"][0]


def test_documented_defaults_match_the_code() -> None:
    """Defaults that are values (durations, sizes, URLs, numbers) equal Settings()'s."""
    table = _table()
    s = Settings()
    assert table["RELAY_DATABASE_URL"][0] == f"`{s.database_url}`"
    assert (
        parse_duration_s("x", table["RELAY_DELIVERY_TIMEOUT"][0].strip("`")) == s.delivery_timeout_s
    )
    assert parse_size("x", table["RELAY_MAX_BODY"][0].strip("`")) == s.max_body_bytes
    assert table["RELAY_CONCURRENCY"][0] == f"`{s.concurrency}`"
    assert table["CONVEX_WEBHOOK_PATH"][0] == f"`{s.convex_webhook_path}`"
    assert table["RELAY_PAYLOAD"][0] == f"`{s.payload}`"
    assert parse_duration_s("x", table["RELAY_BACKLOG_WARN"][0].strip("`")) == s.backlog_warn_s
    assert table["CLERK_API_URL"][0] == f"`{s.clerk_api_url}`"
    assert parse_rate_per_s("x", table["RELAY_CLERK_RATE"][0].strip("`")) == s.clerk_rate_per_s
    schedule = table["RELAY_RETRY_SCHEDULE"][0].strip("`").split(",")
    assert tuple(parse_duration_s("x", p) for p in schedule) == DEFAULT_RETRY_SCHEDULE_S


def test_readme_names_the_two_commands() -> None:
    """The set-up section is the two make commands the Makefile defines."""
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
