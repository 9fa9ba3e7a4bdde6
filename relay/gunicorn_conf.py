"""gunicorn settings for ``relay serve`` (loaded with ``-c python:relay.gunicorn_conf``).

Placeholder until the ops configuration lands: bind on PORT, two sync workers.
"""

from __future__ import annotations

from relay.settings import Settings

_settings = Settings.from_env()
bind = f"0.0.0.0:{_settings.port}"
workers = 2
graceful_timeout = 30
