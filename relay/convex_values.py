"""Making JSON Convex-safe: reversible key escaping and the Convex value limits.

Convex rejects a whole function call if any nested field name starts with ``$``, holds a
character outside printable ASCII, or is longer than 1024 characters; stored documents
also reject nested names starting with ``_``. Clerk metadata is user-chosen JSON, so one
odd key (``"$set"``, ``"名前"``) would make every delivery of that user fail. Keys are
therefore *escaped* (never dropped or mangled), and what escaping cannot fix (too deep,
too big, NaN) is refused up front with :class:`~relay.errors.UnsafeValueError` naming the
limit and the path, so the event fails once with a reason instead of retrying for days.

Escaping (``~`` is the escape character; the inverse is ``unescape_key`` here and
``unescapeKey`` in ``examples/convex/lib/escaping.ts``):

- ``~`` becomes ``~7E``; a leading ``$`` or ``_`` becomes ``~24`` / ``~5F``;
- any other character outside 0x20-0x7E becomes ``~XX`` (code point < 0x100),
  ``~uXXXX`` (< 0x10000) or ``~UXXXXXX``, upper-case hex;
- the empty key becomes ``~`` (no other escaped key ends in a bare ``~``).

Keys that are already safe and contain no ``~`` come out unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from relay.errors import UnsafeValueError

ESCAPE = "~"
#: Convex field names: at most this many characters.
MAX_KEY_CHARS = 1024
MAX_OBJECT_FIELDS = 1024
MAX_ARRAY_ELEMENTS = 8192
#: Nesting as Convex counts it: scalars 0, ``{}``/``[]`` of scalars 1.
MAX_DOCUMENT_NESTING = 16
MAX_VALUE_NESTING = 64
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_ARGS_BYTES = 16 * 1024 * 1024
#: JSON numbers reach Convex as float64; larger integers would silently change value.
MAX_SAFE_INTEGER = 2**53 - 1

_SAFE_CHAR_RE = re.compile(r"[\x20-\x7d]")  # printable ASCII minus "~" (0x7E)
_SAFE_KEY_RE = re.compile(r"[\x20-\x23\x25-\x5e\x60-\x7d][\x20-\x7d]*")  # no leading $ or _
_ESCAPE_RE = re.compile(r"~(?:([0-9A-F]{2})|u([0-9A-F]{4})|U([0-9A-F]{6}))")


def escape_key(key: str) -> str:
    """The Convex-safe spelling of ``key``; ``unescape_key`` restores it exactly."""
    if _SAFE_KEY_RE.fullmatch(key):
        return key  # the common case: Clerk's own keys and ordinary metadata keys
    if key == "":
        return ESCAPE
    out = []
    for i, ch in enumerate(key):
        if _SAFE_CHAR_RE.fullmatch(ch) and not (i == 0 and ch in "$_"):
            out.append(ch)
            continue
        cp = ord(ch)
        if cp < 0x100:
            out.append(f"~{cp:02X}")
        elif cp < 0x10000:
            out.append(f"~u{cp:04X}")
        else:
            out.append(f"~U{cp:06X}")
    return "".join(out)


def unescape_key(key: str) -> str:
    """Undo :func:`escape_key`. Text that is not a valid escape is kept literally."""
    if key == ESCAPE:
        return ""
    if ESCAPE not in key:
        return key

    def decode(m: re.Match[str]) -> str:
        cp = int(m.group(1) or m.group(2) or m.group(3), 16)
        return chr(cp) if cp <= 0x10FFFF else m.group(0)

    return _ESCAPE_RE.sub(decode, key)


def unescape_keys(value: Any) -> Any:
    """``value`` with every object key (at any depth) passed through :func:`unescape_key`."""
    if isinstance(value, Mapping):
        return {unescape_key(k): unescape_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape_keys(v) for v in value]
    return value


def safe_key(key: object, path: str) -> str:
    """Escape one key, refusing non-string keys and keys too long even once escaped."""
    if not isinstance(key, str):
        raise UnsafeValueError(f"object key {key!r} is not a string", path)
    escaped = escape_key(key)
    if len(escaped) > MAX_KEY_CHARS:
        raise UnsafeValueError(
            f"field name is {len(escaped)} characters after escaping; Convex allows at most "
            f"{MAX_KEY_CHARS}",
            join_path(path, escaped[:40] + "..."),
        )
    return escaped


def escape_keys(value: Any, *, path: str = "", depth: int = 0, max_depth: int) -> Any:
    """Escape every key at any depth; values are left alone (the checker judges them).

    ``depth`` is the nesting level ``value`` sits at; recursion stops past ``max_depth``
    so hostile input cannot exhaust the Python stack before the checker sees it.
    """
    if isinstance(value, Mapping | list):
        if depth >= max_depth:
            raise too_deep(path, max_depth)
        if isinstance(value, list):
            return [
                escape_keys(v, path=f"{path}[{i}]", depth=depth + 1, max_depth=max_depth)
                for i, v in enumerate(value)
            ]
        out = {}
        for k, v in value.items():
            key = safe_key(k, path)
            out[key] = escape_keys(
                v, path=join_path(path, key), depth=depth + 1, max_depth=max_depth
            )
        return out
    return value


def convex_safe(value: Any, *, path: str = "") -> Any:
    """Raw-mode args: keys escaped, nothing renamed or dropped; checked as function args.

    Raw mode's args are not necessarily stored as they are (the official template picks
    fields out of ``data``), so the argument limits apply here, not the document ones.
    """
    out = escape_keys(value, path=path, max_depth=MAX_VALUE_NESTING)
    _check(out, path, document=False)
    return out


def check_convex_value(value: Any, *, document: bool = True) -> None:
    """Raise :class:`UnsafeValueError` unless Convex would accept ``value``.

    ``document=True`` applies the stored-document limits (nesting 16, 1 MiB) because a
    normalized event is typically stored as it arrives; ``False`` applies the function
    argument limits (nesting 64, 16 MiB). Size is measured as compact JSON in UTF-8,
    which tracks Convex's own size measure (it counts keys, delimiters and string bytes
    much the same way) closely but not exactly.
    """
    _check(value, "", document=document)


def _check(value: Any, path: str, *, document: bool) -> None:
    max_depth = MAX_DOCUMENT_NESTING if document else MAX_VALUE_NESTING
    _walk(value, path, 0, max_depth)
    limit = MAX_DOCUMENT_BYTES if document else MAX_ARGS_BYTES
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limit:
        kind = "document" if document else "function call's arguments"
        raise UnsafeValueError(
            f"size is {size} bytes as JSON; a Convex {kind} holds at most "
            f"{limit // (1024 * 1024)} MiB ({limit} bytes)",
            path,
        )


def _walk(value: Any, path: str, depth: int, max_depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise UnsafeValueError(
                f"integer {value} is beyond 2^53-1 and would lose precision as a float64", path
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeValueError(
                f"number {value} is not finite; Convex's JSON carries no NaN or Infinity", path
            )
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnsafeValueError("string is not valid Unicode (lone surrogate)", path) from exc
        return
    if not isinstance(value, Mapping | list):
        raise UnsafeValueError(f"{type(value).__name__} is not a JSON value", path)
    if depth >= max_depth:
        raise too_deep(path, max_depth)
    if isinstance(value, list):
        if len(value) > MAX_ARRAY_ELEMENTS:
            raise UnsafeValueError(
                f"array has {len(value)} elements; Convex allows at most {MAX_ARRAY_ELEMENTS}",
                path,
            )
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1, max_depth)
        return
    if len(value) > MAX_OBJECT_FIELDS:
        raise UnsafeValueError(
            f"object has {len(value)} fields; Convex allows at most {MAX_OBJECT_FIELDS}", path
        )
    for key, item in value.items():
        _check_key(key, path)
        _walk(item, join_path(path, key), depth + 1, max_depth)


def _check_key(key: object, path: str) -> None:
    if not isinstance(key, str):
        raise UnsafeValueError(f"object key {key!r} is not a string", path)
    problem = None
    if not key:
        problem = "is empty"
    elif key[0] in "$_":
        problem = f"starts with {key[0]!r}"
    elif len(key) > MAX_KEY_CHARS:
        problem = f"is longer than {MAX_KEY_CHARS} characters"
    elif not all(" " <= ch <= "~" for ch in key):
        problem = "has a character outside printable ASCII"
    if problem:
        raise UnsafeValueError(f"field name {key[:40]!r} {problem}; escape it first", path)


def too_deep(path: str, limit: int) -> UnsafeValueError:
    """The error for nesting past ``limit`` (shared by the escaper and the checker)."""
    return UnsafeValueError(f"nesting depth exceeds the Convex limit of {limit} levels", path)


def join_path(path: str, key: str) -> str:
    """``data`` + ``x`` -> ``data.x``: the notation every error message uses."""
    return f"{path}.{key}" if path else key
