"""Published rulebook versions, and which one is in force at a moment."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from pathlib import Path

from civiscore.rulebook.load import RulebookError, RulebookProblem, load, loads
from civiscore.rulebook.model import Rulebook
from civiscore.store.base import RecordStore, StoredRulebook


class NoRulebookInForce(LookupError):
    """No published rulebook had taken effect at the moment asked about."""


def publish(store: RecordStore, path: Path, loaded_at: dt.datetime) -> tuple[Rulebook, bool]:
    """Lint and store a rulebook version; returns it and whether it was new.

    Publishing the same version with the same text again is a no-op; the same version with
    different text is refused, because history must say which rules decided what.
    """
    rb = load(path)
    text = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    for existing in store.rulebooks():
        if existing.version == rb.version:
            if existing.sha256 == digest:
                return rb, False
            raise RulebookError(
                [
                    RulebookProblem(
                        str(path),
                        "version",
                        f"version {rb.version!r} is already published with different rules; "
                        "give the changed rulebook a new version",
                    )
                ]
            )
    store.save_rulebook(
        StoredRulebook(rb.version, rb.effective_from, loaded_at, str(path), text, digest)
    )
    return rb, True


@functools.lru_cache(maxsize=32)
def _parse(text: str, source: str) -> Rulebook:
    return loads(text, source)


def in_force(store: RecordStore, at: dt.datetime) -> Rulebook:
    """The rulebook with the latest ``effective_from`` on or before ``at``."""
    candidates = [r for r in store.rulebooks() if r.effective_from <= at.date()]
    if not candidates:
        published = ", ".join(f"{r.version} (from {r.effective_from})" for r in store.rulebooks())
        raise NoRulebookInForce(
            f"no rulebook was in force on {at.date()}; published: {published or 'none'}. "
            "Ask about a later date or publish a rulebook that covers it"
        )
    chosen = max(candidates, key=lambda r: (r.effective_from, r.loaded_at))
    return _parse(chosen.yaml, f"{chosen.source} (version {chosen.version})")


def latest(store: RecordStore) -> Rulebook:
    """The most recently taking-effect rulebook (the one ingestion validates against)."""
    books = store.rulebooks()
    if not books:
        raise NoRulebookInForce("no rulebook published; run `civiscore init` first")
    chosen = max(books, key=lambda r: (r.effective_from, r.loaded_at))
    return _parse(chosen.yaml, f"{chosen.source} (version {chosen.version})")
