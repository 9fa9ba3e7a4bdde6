"""The test PostgreSQL server: its URL, and a fresh schema per test.

``scripts/with-postgres.sh`` starts a throwaway server and sets
``RELAY_TEST_POSTGRES_URL``. Without it, Postgres tests skip on a laptop and fail
under CI, so a CI that forgot the server cannot pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

URL_VARIABLE = "RELAY_TEST_POSTGRES_URL"


def server_url() -> str:
    """The server's URL, or skip (fail under ``CI``) when none is configured."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    hint = f"{URL_VARIABLE} is not set; run under scripts/with-postgres.sh"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {hint}")
    pytest.skip(hint)


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose ``search_path`` is a new, empty schema, dropped afterwards.

    A schema is much cheaper than a database (no template copy), and everything the
    store creates lands in it because every connection sets ``search_path``.
    """
    url = server_url()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
