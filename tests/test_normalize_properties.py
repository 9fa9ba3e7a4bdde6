"""Properties of normalization and key escaping over arbitrary JSON (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.factories import make_envelope
from relay.convex_values import MAX_DOCUMENT_NESTING, MAX_KEY_CHARS, MAX_SAFE_INTEGER
from relay.errors import UnsafeValueError
from relay.normalize import (
    check_convex_value,
    convex_safe,
    escape_key,
    normalize_event,
    unescape_key,
    unescape_keys,
)

FAST = settings(max_examples=200, deadline=None)

#: Every code point, lone surrogates included: JSON can carry "\ud800" and json.loads keeps it.
any_char = st.characters(exclude_categories=())
tricky_char = st.sampled_from(["$", "_", "~", "", " ", "\x00", "\n", "\x7f", "é", "😀", "\ud800"])
any_text = st.text(any_char, max_size=12) | st.lists(tricky_char, max_size=6).map("".join)
keys = any_text | st.text(st.sampled_from("aé😀"), min_size=120, max_size=400)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)


def chain(levels: int, key: str, leaf: Any) -> Any:
    """``leaf`` wrapped in ``levels`` alternating objects and arrays."""
    for i in range(levels):
        leaf = {key: leaf} if i % 2 else [leaf]
    return leaf


json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)
        # Deep chains, so the nesting limit is exercised on both sides of 16.
        | st.builds(chain, st.integers(8, 16), any_text, inner)
    ),
    max_leaves=30,
)

safe_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
safe_values = st.recursive(
    safe_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(any_char, max_size=12), inner, max_size=4)
    ),
    max_leaves=30,
)


def violation(value: Any, depth: int) -> bool:
    """Independent oracle: would Convex refuse ``value`` placed at nesting ``depth``?"""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int):
        return abs(value) > MAX_SAFE_INTEGER
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if depth >= MAX_DOCUMENT_NESTING:
        return True
    children = value.values() if isinstance(value, dict) else value
    too_long = isinstance(value, dict) and any(len(escape_key(k)) > MAX_KEY_CHARS for k in value)
    return too_long or any(violation(v, depth + 1) for v in children)


@FAST
@given(meta=json_values)
def test_user_metadata_is_either_made_safe_or_refused_for_a_real_limit(meta: Any) -> None:
    """Arbitrary metadata gives a valid Convex document, or UnsafeValueError iff a limit is hit."""
    envelope = make_envelope("user.updated", public_metadata=meta, unsafe_metadata=meta)
    try:
        event = normalize_event(
            envelope, event_id="msg_p", include=frozenset({"unsafe_metadata"}), issuer="https://i"
        )
    except UnsafeValueError as exc:
        # data.publicMetadata sits at nesting level 2 (event 0, data 1).
        assert violation(meta, 2), f"refused without a real violation: {exc}"
        assert exc.path == "" or exc.path.startswith("data.")
        return
    assert not violation(meta, 2)
    check_convex_value(event, document=True)
    assert unescape_keys(event["data"]["publicMetadata"]) == unescape_keys(
        event["data"]["unsafeMetadata"]
    )


@FAST
@given(key=any_text | keys)
def test_escape_key_round_trips_and_is_convex_safe(key: str) -> None:
    """escape_key is reversible for every string and yields a legal Convex field name."""
    escaped = escape_key(key)
    assert unescape_key(escaped) == key
    assert escaped
    assert escaped[0] not in "$_"
    assert all(" " <= ch <= "~" for ch in escaped)


@FAST
@given(key=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7D), min_size=1))
def test_safe_keys_without_tilde_are_unchanged(key: str) -> None:
    """A key that is already legal and holds no "~" is not touched by escaping."""
    if key[0] not in "$_":
        assert escape_key(key) == key


@FAST
@given(a=any_text, b=any_text)
def test_escaping_never_merges_two_keys(a: str, b: str) -> None:
    """Distinct keys stay distinct once escaped, so no object field is ever overwritten."""
    assert (escape_key(a) == escape_key(b)) == (a == b)


@FAST
@given(value=safe_values)
def test_convex_safe_is_undone_by_unescape_keys(value: Any) -> None:
    """For values within the limits, unescape_keys(convex_safe(x)) == x."""
    safe = convex_safe(value)
    check_convex_value(safe, document=False)
    assert unescape_keys(safe) == value
