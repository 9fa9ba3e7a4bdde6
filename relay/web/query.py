"""Admin filters as people type them (query strings, forms, JSON) -> :class:`EventFilter`.

One reading for the API and the console, so ``?status=failed,skipped&type=user.*``
means the same in both. Every refusal is a :class:`~relay.errors.BadRequest` that
names the parameter; nothing here touches Flask or the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.errors import BadRequest
from relay.models import EventFilter, Status
from relay.store.sql import decode_cursor
from relay.timeparse import API, moment_ms

DEFAULT_LIMIT = 50
#: Most event ids one bulk replay may name.
MAX_IDS = 1000
MAX_LIMIT = 500
#: Longest accepted glob, entity id or event id (Clerk ids are ~30 characters).
MAX_TEXT = 200
#: Cursors hold a 64-bit sequence number; anything larger is not one of ours.
_MAX_SEQ = 2**63 - 1
# The same patterns are in openapi.json, so the description and the code agree exactly
# (this one for epoch ms; durations' and dates' are relay.timeparse.API's).
_EPOCH_MS = re.compile(r"([0-9]{1,16})(?:\.0+)?")
#: Epoch ms up to the year 2999.
_MAX_EPOCH_MS = 32_503_680_000_000


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A parsed ``GET /admin/events``: the filter plus paging."""

    flt: EventFilter
    limit: int
    cursor: str | None


def parse_statuses(values: Iterable[Any], *, commas: bool = True) -> tuple[Status, ...]:
    """``status`` given repeatedly and/or comma-separated; unknown names are refused."""
    found: list[Status] = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest("status must be a string or a list of strings")
        for name in value.split(",") if commas else [value]:
            try:
                status = Status(name)
            except ValueError:
                choices = ", ".join(s.value for s in Status)
                raise BadRequest(f"status {name!r} is not one of {choices}") from None
            if status not in found:
                found.append(status)
    return tuple(found)


def parse_time_ms(name: str, value: Any, *, now_ms: int, json: bool = False) -> int | None:
    """Epoch ms, an ISO 8601 date or date-time (UTC if no zone), or a duration ago (``2h``).

    In a query string epoch ms are digits; in JSON (``json=True``) they must be a number,
    so ``"123"`` is refused there exactly as the OpenAPI document says.
    """
    if value is None:
        return None
    if value == "":
        raise BadRequest(f"{name} is empty; leave it out instead")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 60.0 as an integer; so do we
    numeric = isinstance(value, int) and not isinstance(value, bool)
    if numeric:
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise BadRequest(f"{name} must be epoch milliseconds or an ISO 8601 date")
    if (numeric or not json) and (m := _EPOCH_MS.fullmatch(text)):
        ms = int(m.group(1))
        if ms > _MAX_EPOCH_MS:
            raise BadRequest(f"{name} is out of range (epoch milliseconds)")
        return ms
    try:
        when_ms = moment_ms(text, API, now_ms=now_ms)
    except ValueError:
        raise BadRequest(f"{name}={text!r} is not a real date and time") from None
    if when_ms is not None:
        return when_ms
    raise BadRequest(
        f"{name}={text[:40]!r} is not epoch ms, an ISO 8601 date or a duration like 2h"
    )


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if value == "":
        raise BadRequest(f"{name} is empty; leave it out instead")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadRequest(f"{name} is too long or contains control characters")
    return value


def parse_filter(
    get: Mapping[str, Any],
    statuses: Iterable[Any],
    *,
    now_ms: int,
    ids: Iterable[Any] = (),
    json: bool = False,
) -> EventFilter:
    """The filter fields shared by listing and bulk replay."""
    id_list = []
    ids = list(ids)
    if len(ids) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids per request")
    for value in ids:
        text = _text("ids", value)
        if text is None:
            raise BadRequest("ids must be non-empty strings")
        id_list.append(text)
    since = parse_time_ms("since", get.get("since"), now_ms=now_ms, json=json)
    until = parse_time_ms("until", get.get("until"), now_ms=now_ms, json=json)
    return EventFilter(
        statuses=parse_statuses(statuses, commas=not json),
        type_glob=_text("type", get.get("type")),
        entity_id=_text("entity", get.get("entity")),
        since_ms=since,
        until_ms=until,
        ids=tuple(id_list),
    )


def parse_limit(value: str | None) -> int:
    """``limit`` from 1 to :data:`MAX_LIMIT` (default :data:`DEFAULT_LIMIT`)."""
    if value is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def parse_cursor(value: str | None) -> str | None:
    """A cursor from a previous page's ``nextCursor``; anything else is refused."""
    if value is None:
        return None
    try:
        seq = decode_cursor(value)
    except (ValueError, UnicodeError):
        raise BadRequest("cursor is not one this relay handed out") from None
    if seq > _MAX_SEQ:
        raise BadRequest("cursor is not one this relay handed out")
    return value


def parse_list_query(args: Any, *, now_ms: int) -> ListQuery:
    """``args`` is a werkzeug ``MultiDict`` (``getlist`` for repeated ``status``)."""
    unknown = set(args) - {"status", "type", "entity", "since", "until", "limit", "cursor"}
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    return ListQuery(
        flt=parse_filter(args, args.getlist("status"), now_ms=now_ms),
        limit=parse_limit(args.get("limit")),
        cursor=parse_cursor(args.get("cursor")),
    )
