"""relay.normalize: the normalized event, key escaping and Convex limits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.factories import fixture_paths, make_envelope
from relay.convex_values import MAX_ARGS_BYTES, MAX_DOCUMENT_BYTES
from relay.errors import UnsafeValueError
from relay.normalize import (
    check_convex_value,
    convex_safe,
    escape_key,
    normalize_event,
    unescape_key,
    unescape_keys,
)

ISSUER = "https://example.clerk.accounts.dev"
SNAPSHOTS = Path(__file__).parent / "snapshots" / "normalized"
FIXTURES = fixture_paths()


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())  # every fixture is a JSON object
    return loaded


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


def user_envelope(**data: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "primary_email_address_id": "idn_2",
        "email_addresses": [
            {"id": "idn_1", "email_address": "old@example.com"},
            {"id": "idn_2", "email_address": "ada@example.com"},
        ],
        "primary_phone_number_id": "idn_p",
        "phone_numbers": [{"id": "idn_p", "phone_number": "+15555550100"}],
        "public_metadata": {},
    }
    return make_envelope("user.updated", entity_id="user_1", **{**base, **data})


def normalized(envelope: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return normalize_event(envelope, event_id="msg_1", **kw)


# --- every fixture -------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_normalizes_to_a_valid_convex_document(path: Path) -> None:
    """Every Clerk example becomes a valid Convex value with the envelope fields lifted out."""
    envelope = load(path)
    event = normalize_event(envelope, event_id="msg_x", issuer=ISSUER)
    check_convex_value(event, document=True)
    data = envelope["data"]
    assert event["id"] == "msg_x"
    assert event["type"] == envelope["type"]
    assert event["occurredAt"] == (
        envelope["timestamp"] * 1000 if envelope["timestamp"] < 10**12 else envelope["timestamp"]
    )
    assert event["instanceId"] == envelope["instance_id"]
    assert event["object"] == data.get("object")
    assert event["entityId"] == data.get("id")
    forbidden = {"private_metadata", "privateMetadata", "unsafeMetadata", "eventAttributes"}
    assert not keys_anywhere(event) & forbidden
    assert not [k for k in keys_anywhere(event["data"]) if "_" in k]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_matches_snapshot(path: Path) -> None:
    """Normalized output of every fixture equals its checked-in snapshot."""
    event = normalize_event(load(path), event_id="msg_snapshot", issuer=ISSUER)
    text = json.dumps(event, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    snapshot = SNAPSHOTS / path.name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(text)
    assert snapshot.exists(), f"missing {snapshot}; run UPDATE_SNAPSHOTS=1 pytest {__file__}"
    assert text == snapshot.read_text()


def test_every_snapshot_has_a_fixture() -> None:
    """No stale snapshot lingers after a fixture is removed or renamed."""
    assert {p.name for p in SNAPSHOTS.glob("*.json")} == {p.name for p in FIXTURES}


# --- envelope fields ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(1716883200, 1716883200000), (1716883200123, 1716883200123), (1716883200.5, 1716883200500)],
)
def test_occurred_at_is_milliseconds_whatever_the_unit(timestamp: float, expected: int) -> None:
    """Envelope timestamps in seconds (Clerk's spec examples) or ms both give ms."""
    # make_envelope takes an int; the float case goes straight into the envelope.
    envelope = {**make_envelope(), "timestamp": timestamp}
    assert normalized(envelope)["occurredAt"] == expected


@pytest.mark.parametrize(
    "data", [None, "text", 42, ["a", {"b_c": 1}], {}, {"object": 7, "id": ["x"]}]
)
def test_unknown_type_with_odd_data_does_not_crash(data: Any) -> None:
    """Unknown types and non-object data go through the generic rules; object/entityId null."""
    event = normalized({"type": "thing.happened", "data": data})
    assert event["type"] == "thing.happened"
    assert event["object"] is None
    assert event["entityId"] is None
    assert event["occurredAt"] is None
    assert event["instanceId"] is None
    if isinstance(data, list):
        assert event["data"] == ["a", {"bC": 1}]
    elif not isinstance(data, dict):
        assert event["data"] == data


def test_missing_data_gives_null_data() -> None:
    """An envelope without data still normalizes, with data null."""
    assert normalized({"type": "x.y"})["data"] is None


def test_snake_case_keys_become_camel_case_recursively() -> None:
    """Clerk's schema keys are camelCased at every depth, including inside arrays."""
    event = normalized(
        make_envelope(
            "organizationMembership.created",
            obj="organization_membership",
            public_user_data={"user_id": "user_9", "first_name": "J"},
            items=[{"plan_id": "p"}],
        )
    )
    assert event["data"]["publicUserData"] == {"userId": "user_9", "firstName": "J"}
    assert event["data"]["items"] == [{"planId": "p"}]
    assert event["data"]["updatedAt"] == 1_700_000_000_000


def test_camel_case_collision_keeps_both_keys() -> None:
    """When a snake key would collide with an existing camel key, both values survive."""
    data = normalized(make_envelope(first_name="snake", firstName="camel"))["data"]
    assert data["firstName"] == "camel"
    assert data["first_name"] == "snake"


# --- metadata and dropping ------------------------------------------------------------


def test_metadata_keys_keep_their_spelling_and_are_escaped() -> None:
    """User-chosen metadata keys are never camelCased, only escaped reversibly."""
    meta = {
        "plan_tier": {"seat_count": 3},
        "$set": 1,
        "_id": 2,
        "名前": "x",
        "": "empty",
        "a~b": True,
        "k" * 1000 + "é": [{"deep_key": None}],
    }
    data = normalized(user_envelope(public_metadata=meta))["data"]
    out = data["publicMetadata"]
    assert out["plan_tier"] == {"seat_count": 3}
    assert out["~24set"] == 1
    assert out["~5Fid"] == 2
    assert out["~u540D~u524D"] == "x"
    assert out["~"] == "empty"
    assert out["a~7Eb"] is True
    assert out["k" * 1000 + "~E9"] == [{"deep_key": None}]
    assert unescape_keys(out) == meta


def test_metadata_key_too_long_after_escaping_is_refused() -> None:
    """A key over 1024 characters once escaped raises, naming the limit and the path."""
    with pytest.raises(UnsafeValueError, match="1024") as exc:
        normalized(user_envelope(public_metadata={"é" * 400: 1}))
    assert exc.value.path.startswith("data.publicMetadata.~E9~E9")


def test_private_and_unsafe_metadata_are_dropped_everywhere_by_default() -> None:
    """private_metadata and unsafe_metadata vanish at every Clerk-schema level."""
    env = load(next(p for p in FIXTURES if p.name == "session.created.json"))
    env["data"]["user"]["unsafe_metadata"] = {"x": 1}
    env["data"]["user"]["public_metadata"] = {"private_metadata": "user data, kept"}
    data = normalized(env)["data"]
    assert "privateMetadata" not in data["user"]
    assert "unsafeMetadata" not in data["user"]
    assert data["user"]["publicMetadata"] == {"private_metadata": "user data, kept"}


def test_nested_private_metadata_in_membership_is_dropped() -> None:
    """organizationMembership.organization.private_metadata is dropped like the top one."""
    env = load(next(p for p in FIXTURES if p.name == "organizationMembership.created.json"))
    env["data"]["organization"]["private_metadata"] = {"secret": 1}
    env["data"]["private_metadata"] = {"secret": 2}
    data = normalized(env)["data"]
    assert "privateMetadata" not in data
    assert "privateMetadata" not in data["organization"]
    assert data["organization"]["publicMetadata"] == {}


def test_include_keeps_private_unsafe_metadata_and_event_attributes() -> None:
    """Named in include, the dropped fields come back (event_attributes at the top level)."""
    env = user_envelope(private_metadata={"stripe_id": "cus_1"}, unsafe_metadata={"$x": 1})
    env["event_attributes"] = {"http_request": {"client_ip": "1.2.3.4", "user_agent": "ua"}}
    event = normalized(
        env, include=frozenset({"private_metadata", "unsafe_metadata", "event_attributes"})
    )
    assert event["data"]["privateMetadata"] == {"stripe_id": "cus_1"}
    assert event["data"]["unsafeMetadata"] == {"~24x": 1}
    assert event["eventAttributes"] == {"httpRequest": {"clientIp": "1.2.3.4", "userAgent": "ua"}}
    assert "eventAttributes" not in normalized(env)


# --- derived user fields --------------------------------------------------------------


def test_user_gets_primary_email_phone_name_and_token_identifier() -> None:
    """A user carries its primary email and phone, full name and Convex tokenIdentifier."""
    data = normalized(user_envelope(), issuer=ISSUER + "/")["data"]
    assert data["email"] == "ada@example.com"
    assert data["phone"] == "+15555550100"
    assert data["name"] == "Ada Lovelace"
    assert data["tokenIdentifier"] == f"{ISSUER}|user_1"


def test_token_identifier_absent_without_issuer() -> None:
    """Without a known issuer there is no tokenIdentifier key at all."""
    assert "tokenIdentifier" not in normalized(user_envelope())["data"]


@pytest.mark.parametrize(
    ("first", "last", "name"),
    [
        (None, None, None),
        ("", "  ", None),
        ("Ada", None, "Ada"),
        (None, "Lovelace", "Lovelace"),
        ("  Ada ", " Lovelace ", "Ada Lovelace"),
        (3, "Lovelace", "Lovelace"),
    ],
)
def test_name_is_never_null_null(first: Any, last: Any, name: str | None) -> None:
    """name joins the non-empty trimmed parts, or is None: never "null null"."""
    data = normalized(user_envelope(first_name=first, last_name=last))["data"]
    assert data["name"] == name


@pytest.mark.parametrize(
    "overrides",
    [
        {"primary_email_address_id": None},
        {"primary_email_address_id": "idn_missing"},
        {"email_addresses": "not a list"},
        {"email_addresses": [None, {"id": "idn_2", "email_address": 5}]},
    ],
)
def test_email_is_null_without_a_resolvable_primary(overrides: dict[str, Any]) -> None:
    """No primary id, a dangling id or malformed addresses give email None."""
    assert normalized(user_envelope(**overrides))["data"]["email"] is None


def test_deleted_user_gets_no_derived_fields() -> None:
    """The minimal user.deleted payload is passed through without email/name/token."""
    env = load(next(p for p in FIXTURES if p.name == "user.deleted.json"))
    data = normalized(env, issuer=ISSUER)["data"]
    assert data == {
        "object": "user",
        "id": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "deleted": True,
        "externalId": "ex_123456789",
    }


# --- limits ---------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_depth_limit_counts_like_convex() -> None:
    """Metadata reaching document nesting 16 passes; one level more is refused with its path."""
    # The event object is level 1 and data level 2, so 14 levels of metadata reach 16.
    normalized(user_envelope(public_metadata=nested(14)))
    with pytest.raises(
        UnsafeValueError, match="nesting depth exceeds the Convex limit of 16"
    ) as exc:
        normalized(user_envelope(public_metadata=nested(15)))
    assert exc.value.path == "data.publicMetadata" + ".a" * 14


def test_hostile_depth_fails_cleanly() -> None:
    """Nesting far past the limit raises UnsafeValueError, not RecursionError."""
    with pytest.raises(UnsafeValueError, match="nesting") as exc:
        normalized(user_envelope(public_metadata=nested(5000)))
    assert exc.value.path.startswith("data.publicMetadata.a.a")


@pytest.mark.parametrize(
    ("meta", "match", "path"),
    [
        ({"x": [0] * 8193}, "array has 8193 elements; Convex allows at most 8192", "x"),
        ({"x": {str(i): i for i in range(1025)}}, "object has 1025 fields", "x"),
        ({"x": [1, 2, 3, float("nan")]}, "NaN", "x[3]"),
        ({"x": float("inf")}, "not finite", "x"),
        ({"x": 2**53}, "2\\^53", "x"),
        ({"x": -(2**63)}, "2\\^53", "x"),
        ({"x": "\ud800"}, "lone surrogate", "x"),
        ({"x": "y" * (MAX_DOCUMENT_BYTES + 1)}, "1 MiB", ""),
        ({"x": {1, 2}}, "set is not a JSON value", "x"),
    ],
)
def test_limits_raise_with_the_limit_and_path(meta: Any, match: str, path: str) -> None:
    """Each Convex limit is refused with a message naming the limit and where it was broken."""
    with pytest.raises(UnsafeValueError, match=match) as exc:
        normalized(user_envelope(public_metadata=meta))
    assert exc.value.path == (f"data.publicMetadata.{path}" if path else "")


def test_largest_safe_integer_passes() -> None:
    """2^53-1 and Clerk's ms timestamps are exact float64s and pass."""
    check_convex_value({"a": 2**53 - 1, "b": -(2**53 - 1), "c": 1716883200000})
    with pytest.raises(UnsafeValueError):
        check_convex_value({"a": 2**53})


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("$x", "starts with '\\$'"),
        ("_x", "starts with '_'"),
        ("", "is empty"),
        ("é", "outside printable ASCII"),
        ("\n", "outside printable ASCII"),
        ("k" * 1025, "longer than 1024"),
    ],
)
def test_checker_refuses_unescaped_keys(key: str, problem: str) -> None:
    """check_convex_value names the bad field name and where it sits."""
    with pytest.raises(UnsafeValueError, match=problem) as exc:
        check_convex_value({"outer": [{key: 1}]})
    assert exc.value.path == "outer[0]"
    assert "at outer[0]" in str(exc.value)


def test_argument_limits_are_looser_than_document_limits() -> None:
    """document=False allows nesting 64 and 16 MiB; document=True does not."""
    deep = nested(40)
    check_convex_value(deep, document=False)
    with pytest.raises(UnsafeValueError, match="limit of 16"):
        check_convex_value(deep)
    with pytest.raises(UnsafeValueError, match="limit of 64"):
        check_convex_value(nested(65), document=False)
    big = {"x": "y" * (MAX_DOCUMENT_BYTES + 10)}
    check_convex_value(big, document=False)
    with pytest.raises(UnsafeValueError, match="16 MiB"):
        check_convex_value({"x": "y" * MAX_ARGS_BYTES}, document=False)


# --- raw mode helper and escaping -----------------------------------------------------


def test_convex_safe_escapes_keys_and_changes_nothing_else() -> None:
    """Raw mode: keys escaped at every depth, snake_case and private_metadata untouched."""
    data = {"first_name": "A", "private_metadata": {"$k": [{"_v": 1}]}, "~": None}
    out = convex_safe({"data": data})
    assert out == {
        "data": {"first_name": "A", "private_metadata": {"~24k": [{"~5Fv": 1}]}, "~7E": None}
    }
    assert unescape_keys(out) == {"data": data}


def test_convex_safe_names_the_path_prefix() -> None:
    """Errors from convex_safe carry the caller's path prefix."""
    with pytest.raises(UnsafeValueError) as exc:
        convex_safe({"a": float("nan")}, path="args.data")
    assert exc.value.path == "args.data.a"


@pytest.mark.parametrize(
    ("key", "escaped"),
    [
        ("first_name", "first_name"),
        ("a b-c.d", "a b-c.d"),
        ("", "~"),
        ("~", "~7E"),
        ("~7E", "~7E7E"),
        ("$set", "~24set"),
        ("a$", "a$"),
        ("_id", "~5Fid"),
        ("__proto__", "~5F_proto__"),
        ("café", "caf~E9"),
        ("\x00\x7f", "~00~7F"),
        ("日本", "~u65E5~u672C"),
        ("😀", "~U01F600"),
        ("\ud800", "~uD800"),
    ],
)
def test_escape_key_examples(key: str, escaped: str) -> None:
    """The documented escaping examples hold, and each round-trips."""
    assert escape_key(key) == escaped
    assert unescape_key(escaped) == key


@pytest.mark.parametrize("text", ["plain", "a~", "~zz", "~u12", "~U110000", "~7e"])
def test_unescape_key_keeps_invalid_escapes_literally(text: str) -> None:
    """Text that is not a valid escape sequence is returned as it is."""
    assert unescape_key(text) == text
