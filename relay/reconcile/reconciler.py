"""``relay reconcile``: make Convex equal Clerk by queueing what webhooks missed.

For each kind (users, organizations, memberships) the run reads Convex's state
(``{clerkId, updatedAt}`` pages; only with ``CONVEX_URL`` + ``CONVEX_DEPLOY_KEY``),
then Clerk's objects page by page, and sorts each object into

* **missing**: Clerk has it, Convex does not;
* **stale**: Convex's ``updatedAt`` is older than Clerk's ``updated_at``;
* **gone**: Convex has it, Clerk did not list it *and* answers 404 for it now
  (so an object created after its list page was read is never deleted).

Differences become ordinary outbox events in Clerk's own envelope (``*.updated``
with the API's object as ``data``; ``*.deleted`` with ``{id, object, deleted}``),
so they travel the webhooks' ordering, targets, re-signing and retries. Their ids
are deterministic per (object, version) (:func:`reconcile_id`): a second run, or a
run after a ``kill -9``, queues nothing already queued. An upsert's envelope
``timestamp`` is the object's ``updated_at``, which makes its order key that version:
a newer webhook orders after it, an older one arriving later is superseded. A
deletion's is the time of the run: Clerk confirmed the object is gone, so it goes
after every event about it that exists.

The pure parts (ids, envelopes, classification) take time as an argument; the run
itself is :class:`Reconciler`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from relay.errors import ConfigError, ConvexQueryError
from relay.models import RECONCILE_ID_PREFIX, NewEvent, Status, to_ms
from relay.reconcile.clerk_api import ClerkAPI, JSONObject, RateLimiter
from relay.reconcile.convex_state import ConvexState, StateRow
from relay.reconcile.index import ReconcileIndex
from relay.settings import Settings
from relay.store import Store


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of Clerk object and how each side names it."""

    name: str  # the CLI's and the summary's name: "users"
    object: str  # Clerk's data.object: "user"
    event_prefix: str  # Clerk's event types: "user" (user.updated, user.deleted)
    state_query: str  # the Convex query listing {clerkId, updatedAt} pages

    @property
    def upsert_type(self) -> str:
        return f"{self.event_prefix}.updated"

    @property
    def delete_type(self) -> str:
        return f"{self.event_prefix}.deleted"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("users", "user", "user", "users:syncState"),
        Kind("organizations", "organization", "organization", "orgs:organizationSyncState"),
        Kind(
            "memberships",
            "organization_membership",
            "organizationMembership",
            "orgs:membershipSyncState",
        ),
    )
}


@dataclass(slots=True)
class Counts:
    """One kind's result; ``None`` where Convex's state could not be read."""

    clerk: int = 0
    convex: int | None = None
    missing: int = 0
    stale: int = 0
    gone: int | None = None
    queued: int = 0

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def kinds_for(settings: Settings, objects: str | None) -> list[Kind]:
    """The kinds to reconcile: those named (each must be delivered), else every delivered one.

    A kind this configuration would store as ``skipped`` (e.g. organizations on the
    mutation target without an ``organization.*`` route) cannot be reconciled.
    """
    if objects is None:
        return [k for k in KINDS.values() if settings.delivers(k.upsert_type)]
    names = [n.strip() for n in objects.split(",") if n.strip()]
    chosen = []
    for name in names:
        if name not in KINDS:
            raise ConfigError("--objects", f"unknown kind {name!r}", ",".join(KINDS))
        kind = KINDS[name]
        if not settings.delivers(kind.upsert_type):
            raise ConfigError(
                "RELAY_ROUTES",
                f"{kind.upsert_type} events are not delivered by this configuration "
                f"(RELAY_EVENTS / RELAY_ROUTES), so {name} cannot be reconciled",
                f"{kind.event_prefix}.*=module:function",
            )
        chosen.append(kind)
    return sorted(dict.fromkeys(chosen), key=list(KINDS.values()).index)


def reconcile_id(kind: Kind, clerk_id: str, version: str) -> str:
    """``reconcile_<24 hex>``: the same for the same object version on every run."""
    digest = hashlib.sha256(f"{kind.object}:{clerk_id}:{version}".encode()).hexdigest()
    return RECONCILE_ID_PREFIX + digest[:24]


def version_of(obj: JSONObject) -> int | None:
    """Clerk's ``updated_at`` (ms), falling back to ``created_at``."""
    return to_ms(obj.get("updated_at")) or to_ms(obj.get("created_at"))


def classify(clerk_version: int | None, convex_version: int | None) -> str | None:
    """``"missing"``, ``"stale"``, or None when Convex already holds this version (or newer)."""
    if convex_version is None:
        return "missing"
    if clerk_version is not None and convex_version < clerk_version:
        return "stale"
    return None


def upsert_event(kind: Kind, obj: JSONObject, *, now_ms: int) -> NewEvent:
    """``<kind>.updated`` carrying the API's object, ordered at its ``updated_at``."""
    version = version_of(obj) or now_ms
    envelope = {"data": obj, "object": "event", "timestamp": version, "type": kind.upsert_type}
    return _event(reconcile_id(kind, str(obj["id"]), str(version)), envelope, now_ms)


def deleted_event(kind: Kind, clerk_id: str, *, now_ms: int) -> NewEvent:
    """``<kind>.deleted`` as Clerk sends it (``{id, object, deleted}``), ordered at ``now_ms``."""
    data = {"deleted": True, "id": clerk_id, "object": kind.object}
    envelope = {"data": data, "object": "event", "timestamp": now_ms, "type": kind.delete_type}
    return _event(reconcile_id(kind, clerk_id, "deleted"), envelope, now_ms)


def _event(event_id: str, envelope: dict[str, Any], now_ms: int) -> NewEvent:
    body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return NewEvent.from_envelope(event_id, body, envelope, received_at_ms=now_ms)


#: ``on_diff(kind, what, clerk_id)``: one difference found ("missing", "stale", "gone").
DiffCallback = Callable[[str, str, str], None]
#: ``on_progress(kind, objects_read)``: after each Clerk page.
ProgressCallback = Callable[[str, int], None]


class Reconciler:
    """One reconcile run over some kinds; ``convex=None`` when Convex cannot be read."""

    def __init__(
        self,
        store: Store,
        clerk: ClerkAPI,
        convex: ConvexState | None,
        *,
        now_ms: Callable[[], int],
        dry_run: bool = False,
        on_diff: DiffCallback | None = None,
        on_progress: ProgressCallback | None = None,
        scratch_dir: str | None = None,
    ) -> None:
        self.store = store
        self.clerk = clerk
        self.convex = convex
        self.now_ms = now_ms
        self.dry_run = dry_run
        self.on_diff = on_diff or (lambda kind, what, oid: None)
        self.on_progress = on_progress or (lambda kind, n: None)
        self.scratch_dir = scratch_dir
        #: Things the operator should know (e.g. deletions could not be detected).
        self.notes: list[str] = []
        #: Seconds per phase (``users: convex``, ``users: clerk``, ``users: confirm``).
        self.phase_s: dict[str, float] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, store: Store, *, now_ms: Callable[[], int], dry_run: bool
    ) -> Reconciler:
        """Clients for ``CLERK_API_URL`` and, when it can be read, Convex's state."""
        settings.require_clerk_api()
        assert settings.clerk_secret_key is not None  # noqa: S101 - required just above
        clerk = ClerkAPI(
            settings.clerk_api_url,
            settings.clerk_secret_key,
            limiter=RateLimiter(settings.clerk_rate_per_s),
        )
        convex = None
        if settings.convex_url and settings.convex_deploy_key:
            convex = ConvexState(settings.convex_url, settings.convex_deploy_key)
        return cls(store, clerk, convex, now_ms=now_ms, dry_run=dry_run)

    def close(self) -> None:
        """Close the HTTP clients (the store is the caller's)."""
        self.clerk.close()
        if self.convex is not None:
            self.convex.close()

    def run(self, kinds: Sequence[Kind]) -> dict[str, Counts]:
        """Reconcile each kind in turn (users first: a user's deletion drops its memberships)."""
        index = ReconcileIndex(self.scratch_dir)
        try:
            return {kind.name: self._reconcile(kind, index) for kind in kinds}
        finally:
            index.close()

    def _reconcile(self, kind: Kind, index: ReconcileIndex) -> Counts:
        counts = Counts()
        convex = self.convex
        started = time.monotonic()
        if convex is not None:
            # Convex first: everything it lists existed in Clerk before Clerk's list
            # was read, so "not listed" means deleted since (or skipped by paging,
            # which the 404 check catches).
            try:
                counts.convex = sum(
                    index.add_convex(kind.name, page) for page in convex.pages(kind.state_query)
                )
            except ConvexQueryError as exc:
                if not exc.missing_function:
                    raise
                self.notes.append(
                    f"Convex has no {kind.state_query} query (the official template?): "
                    f"every Clerk {kind.object} is queued as an upsert and deletions are "
                    "not detected; examples/convex ships the query"
                )
                convex = None
        listed = time.monotonic()
        self.phase_s[f"{kind.name}: convex"] = listed - started
        for page in self._clerk_pages(kind):
            self._clerk_page(kind, page, index, counts, read_convex=convex is not None)
            self.on_progress(kind.name, counts.clerk)
        confirming = time.monotonic()
        self.phase_s[f"{kind.name}: clerk"] = confirming - listed
        if convex is not None:
            counts.gone = 0
            for rows in index.unseen(kind.name):
                for row in rows:
                    if self._exists(kind, row):
                        continue
                    counts.gone += 1
                    self.on_diff(kind.name, "gone", row.clerk_id)
                    self._queue(deleted_event(kind, row.clerk_id, now_ms=self.now_ms()), counts)
            self.phase_s[f"{kind.name}: confirm"] = time.monotonic() - confirming
        return counts

    def _clerk_page(
        self,
        kind: Kind,
        page: list[JSONObject],
        index: ReconcileIndex,
        counts: Counts,
        *,
        read_convex: bool,
    ) -> None:
        ids = [str(obj["id"]) for obj in page]
        new = index.mark_seen(kind.name, ids)
        held = index.convex_versions(kind.name, ids) if read_convex else {}
        now_ms = self.now_ms()
        for obj in page:
            oid = str(obj["id"])
            if oid not in new:
                continue
            new.discard(oid)  # a page listing an object twice counts it once
            counts.clerk += 1
            what = classify(version_of(obj), held.get(oid))
            if what is None:
                continue
            setattr(counts, what, getattr(counts, what) + 1)
            self.on_diff(kind.name, what, oid)
            self._queue(upsert_event(kind, obj, now_ms=now_ms), counts)

    def _clerk_pages(self, kind: Kind) -> Iterator[list[JSONObject]]:
        if kind.name == "users":
            return self.clerk.user_pages()
        if kind.name == "organizations":
            return self.clerk.organization_pages()
        return self.clerk.membership_pages()

    def _exists(self, kind: Kind, row: StateRow) -> bool:
        if kind.name == "users":
            return self.clerk.user_exists(row.clerk_id)
        if kind.name == "organizations":
            return self.clerk.organization_exists(row.clerk_id)
        return self.clerk.membership_exists(row.org_id, row.clerk_id)

    def _queue(self, event: NewEvent, counts: Counts) -> None:
        if self.dry_run:
            return
        assert event.status is Status.PENDING  # noqa: S101 - the CLI reconciles delivered kinds only
        if self.store.insert(event):
            counts.queued += 1
