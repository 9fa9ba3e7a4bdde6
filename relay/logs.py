"""Structured logging: structlog configured once, JSON when not on a TTY.

Every module logs through ``structlog.get_logger()``; request and event ids travel
in contextvars so each canonical line carries them without being passed around.
Secrets and payloads are never bound: callers log ids, types, statuses and timings.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def shared_processors() -> list[Any]:
    """Processors used by both structlog and stdlib records (gunicorn, werkzeug)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """Set up structlog and the stdlib root logger; later calls only change the level."""
    global _configured
    use_json = fmt == "json" or (fmt is None and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # werkzeug's own access log would duplicate our canonical request line.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not _configured:
        structlog.configure(
            processors=[
                *shared_processors(),
                structlog.processors.StackInfoRenderer(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        _configured = True
