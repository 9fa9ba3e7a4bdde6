"""The README's promises checked against the code, so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from relay.settings import VARIABLES, Settings, config_table_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_table() -> str:
    return README.split("<!-- config-table:start -->\n")[1].split("<!-- config-table:end -->")[0]


def test_config_table_is_rendered_from_the_settings_table() -> None:
    """The README's configuration table is exactly relay.settings.VARIABLES rendered, so
    a variable added, removed or re-documented on one side only fails here."""
    assert _readme_table() == config_table_markdown(), (
        "README.md's configuration table differs from relay/settings.py: run `make docs`"
    )


def test_documented_defaults_match_the_code() -> None:
    """A default the table writes as one value (`10s`, `1MiB`, `90/10s`, a URL) is what
    Settings() holds when the variable is unset."""
    defaults = Settings()
    checked = set()
    for var in VARIABLES:
        if re.fullmatch(r"`[^`]+`", var.default) and not var.fallback:
            assert var.parse(var.env, var.default.strip("`")) == getattr(defaults, var.field), (
                var.env
            )
            checked.add(var.env)
    assert checked >= {
        "CONVEX_WEBHOOK_PATH", "RELAY_PAYLOAD", "RELAY_DATABASE_URL", "RELAY_DELIVERY_TIMEOUT",
        "RELAY_RETRY_SCHEDULE", "RELAY_CONCURRENCY", "RELAY_BACKLOG_WARN", "RELAY_MAX_BODY",
        "CLERK_API_URL", "RELAY_CLERK_RATE",
    }  # fmt: skip


def test_a_fallback_variable_is_named_in_its_default() -> None:
    """A variable read in place of an unset one (CLERK_ISSUER_URL's) is documented there."""
    fallbacks = [var for var in VARIABLES if var.fallback]
    assert fallbacks
    for var in fallbacks:
        assert f"`{var.fallback}`" in var.default


def test_readme_names_the_two_commands() -> None:
    """The set-up section is the two make commands the Makefile defines."""
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
