"""Clerk envelope -> the normalized event of the contract, ready to be a Convex value.

Rules, in the order they apply to ``data`` (the contract's "Normalized event"):

- **camelCase for Clerk's keys only.** Keys of Clerk's own schema that are snake_case
  (``first_name``, ``public_user_data.user_id``) become camelCase at every depth. Keys
  inside any ``*_metadata`` object (``public_metadata``, ``unsafe_metadata``,
  ``organization.public_metadata`` ...) were chosen by the application, so their
  spelling is kept; they are only escaped. Keys that are not plain snake_case are left
  as they are. If two keys would become the same (``a_1`` and ``a1``) the one already
  in that spelling keeps it and the other keeps its snake_case, so nothing is lost.
- **Escaping.** Every key, Clerk's or the user's, is then made Convex-safe by
  :func:`relay.convex_values.escape_key` (reversible; see ``docs/normalization.md``).
- **Dropped unless included.** ``private_metadata`` (backend-only secrets) and
  ``unsafe_metadata`` (written by end users from the browser: untrusted, and one
  over-nested value from a user would make that user's events undeliverable) are removed
  wherever Clerk's schema has them (also ``session.user``, ``organization`` inside a
  membership ...). The envelope's ``event_attributes`` (end-user IP and user agent) is
  left out too. ``include={"private_metadata", "unsafe_metadata", "event_attributes"}``
  keeps them; ``event_attributes`` then appears at the top level as ``eventAttributes``.
- **Derived user fields.** When ``data.object == "user"`` and ``data`` is not the minimal
  ``deleted`` payload, ``data`` gains ``email``, ``phone`` and ``name`` (each a string or
  null) and, when an issuer is known, ``tokenIdentifier`` (absent otherwise, so a
  ``v.optional(v.string())`` validator fits). Embedded users (``session.user``) are not
  given derived fields: consumers of sessions key on ``userId``.
- **Anything else** (unknown event types, ``data`` that is not an object, missing
  fields) goes through the same generic rules; ``object``/``entityId`` are null when
  ``data`` has no string ``object``/``id``.

The result is checked against the Convex *document* limits (it is usually stored as
is); what cannot be made valid raises :class:`~relay.errors.UnsafeValueError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from relay.convex_values import (
    MAX_DOCUMENT_NESTING,
    check_convex_value,
    convex_safe,
    escape_key,
    escape_keys,
    join_path,
    safe_key,
    too_deep,
    unescape_key,
    unescape_keys,
)
from relay.models import to_ms

__all__ = [
    "check_convex_value",
    "convex_safe",
    "escape_key",
    "normalize_event",
    "unescape_key",
    "unescape_keys",
]

#: Removed from ``data`` at Clerk-schema level unless named in ``include``.
DROPPED_BY_DEFAULT = frozenset({"private_metadata", "unsafe_metadata"})
_SNAKE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def normalize_event(
    envelope: Mapping[str, Any],
    *,
    event_id: str,
    include: frozenset[str] = frozenset(),
    issuer: str | None = None,
) -> dict[str, Any]:
    """The contract's normalized event for one Clerk envelope (see the module docstring)."""
    raw = envelope.get("data")
    obj = raw.get("object") if isinstance(raw, Mapping) else None
    oid = raw.get("id") if isinstance(raw, Mapping) else None
    event_type = envelope.get("type")
    instance = envelope.get("instance_id")
    data = _clerk(raw, path="data", depth=1, include=include)
    if isinstance(raw, Mapping) and obj == "user" and raw.get("deleted") is not True:
        data.update(_user_fields(raw, issuer))
    event: dict[str, Any] = {
        "id": event_id,
        "type": event_type if isinstance(event_type, str) else None,
        "occurredAt": to_ms(envelope.get("timestamp")),
        "instanceId": instance if isinstance(instance, str) else None,
        "object": obj if isinstance(obj, str) else None,
        "entityId": oid if isinstance(oid, str) else None,
        "data": data,
    }
    if "event_attributes" in include and "event_attributes" in envelope:
        event["eventAttributes"] = _clerk(
            envelope["event_attributes"], path="eventAttributes", depth=1, include=include
        )
    check_convex_value(event, document=True)
    return event


def camel_case(key: str) -> str:
    """``public_user_data`` -> ``publicUserData``; anything not plain snake_case as is."""
    if not _SNAKE_RE.fullmatch(key):
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _clerk(value: Any, *, path: str, depth: int, include: frozenset[str]) -> Any:
    """Apply the Clerk-schema rules (camelCase, dropping, escaping) below ``value``."""
    if isinstance(value, list):
        if depth >= MAX_DOCUMENT_NESTING:
            raise too_deep(path, MAX_DOCUMENT_NESTING)
        return [
            _clerk(v, path=f"{path}[{i}]", depth=depth + 1, include=include)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, Mapping):
        return value
    if depth >= MAX_DOCUMENT_NESTING:
        raise too_deep(path, MAX_DOCUMENT_NESTING)
    out: dict[str, Any] = {}
    for key, new_key in _renamed_keys(value).items():
        if key in DROPPED_BY_DEFAULT and key not in include:
            continue
        safe = safe_key(new_key, path)
        child_path = join_path(path, safe)
        item = value[key]
        if key.endswith("_metadata"):
            # Application-chosen keys: escaped so Convex accepts them, never renamed.
            out[safe] = escape_keys(
                item, path=child_path, depth=depth + 1, max_depth=MAX_DOCUMENT_NESTING
            )
        else:
            out[safe] = _clerk(item, path=child_path, depth=depth + 1, include=include)
    return out


def _renamed_keys(obj: Mapping[Any, Any]) -> dict[Any, Any]:
    """Original key -> camelCase key, keeping every key distinct (see module docstring)."""
    taken = {k for k in obj if not isinstance(k, str) or camel_case(k) == k}
    names: dict[Any, Any] = {}
    for key in obj:
        if not isinstance(key, str):
            names[key] = key  # refused with a path by safe_key
            continue
        new = camel_case(key)
        if new != key:
            new = key if new in taken else new
            taken.add(new)
        names[key] = new
    return names


def _user_fields(user: Mapping[str, Any], issuer: str | None) -> dict[str, Any]:
    """``email``, ``phone``, ``name`` and maybe ``tokenIdentifier`` for a Clerk user."""
    fields: dict[str, Any] = {
        "email": _primary(user, "primary_email_address_id", "email_addresses", "email_address"),
        "phone": _primary(user, "primary_phone_number_id", "phone_numbers", "phone_number"),
        "name": full_name(user.get("first_name"), user.get("last_name")),
    }
    user_id = user.get("id")
    if issuer and isinstance(user_id, str) and user_id:
        # Convex's ctx.auth identity is "<issuer>|<subject>", issuer without a final "/".
        fields["tokenIdentifier"] = f"{issuer.rstrip('/')}|{user_id}"
    return fields


def _primary(user: Mapping[str, Any], id_field: str, list_field: str, value_field: str) -> Any:
    """The ``value_field`` of the entry of ``user[list_field]`` whose id is the primary one."""
    primary_id = user.get(id_field)
    entries = user.get(list_field)
    if not isinstance(primary_id, str) or not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("id") == primary_id:
            found = entry.get(value_field)
            return found if isinstance(found, str) else None
    return None


def full_name(first: object, last: object) -> str | None:
    """``"Ada Lovelace"``, or whichever part exists, or None: never ``"null null"``."""
    parts = [p.strip() for p in (first, last) if isinstance(p, str) and p.strip()]
    return " ".join(parts) or None
