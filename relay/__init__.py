"""clerk-convex-relay: verified, durable delivery of Clerk webhooks to Convex."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flask import Flask

    from relay.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app: ingest, health, metrics and (with a token) admin. No I/O here."""
    from relay.web.app import build_app

    return build_app(settings)
