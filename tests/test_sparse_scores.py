"""A snapshot stores only the score rows that differ from the base's default.

Every member of the population without a counting record or a grave sanction scores the base,
in the base's band, uncapped; a snapshot's scores leave those rows out and its ``subjects``
counts the whole population. What a reader sees must not change: each member's score and band
(stored or default) equal the one-subject plan's, the operator's statistics count every
member, and band benefits reach the default members when the base's band has one.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest

from civiscore.engine import tallies
from civiscore.engine.plan import default_row
from civiscore.rulebook.load import demo_rulebook_path
from civiscore.store import snapshots
from civiscore.store.base import Snapshot
from civiscore.workspace import Workspace
from tests.test_incremental import assert_same_snapshot
from tests.utils import ingest_rows, resident_id

RECEIVED = dt.datetime(2026, 1, 10)
AT = dt.datetime(2026, 1, 31)
LATER_K = dt.datetime(2026, 3, 5)
# Resident 1 filed late (-5), 2 gave blood (+5), 3's only record stopped counting long ago, 4
# lost a court case (a grave sanction, -100), 5 gave blood after AT, and the record came later.
RESIDENTS = (1, 2, 3, 4, 5)


def _city(ws: Workspace) -> None:
    def row(n: int, kind: str, occurred: str, **extra: str) -> dict[str, str]:
        return {
            "record_id": f"R{n}-{kind}",
            "subject_id": resident_id(n),
            "kind": kind,
            "occurred_at": occurred,
            **extra,
        }

    ingest_rows(ws, "tax", [row(1, "tax.late_filing", "2025-12-01")], received_at=RECEIVED)
    ingest_rows(
        ws, "blood_service", [row(2, "civic.blood_donation", "2025-11-01")], received_at=RECEIVED
    )
    # Received after the first snapshot's K.
    ingest_rows(
        ws, "blood_service", [row(5, "civic.blood_donation", "2026-03-01")], received_at=LATER_K
    )
    ingest_rows(ws, "tax", [row(3, "tax.late_filing", "2019-01-01")], received_at=RECEIVED)
    ingest_rows(
        ws,
        "courts",
        [row(4, "court.judgment_default", "2025-12-15T10:00:00", reference="J1")],
        received_at=RECEIVED,
    )


def _stored(ws: Workspace, snap: Snapshot, table: str, columns: str) -> dict[int, Any]:
    sql = snapshots.resolved(ws.store.con, table, snap.snapshot_id)
    return {
        r[0]: r[1:] for r in ws.store.con.execute(f"SELECT sid, {columns} FROM {sql} s").fetchall()
    }


def _granted(ws: Workspace, snap: Snapshot) -> set[int]:
    """The subjects a snapshot lists for the green channel."""
    sql = snapshots.resolved(ws.store.con, "snapshot_listings", snap.snapshot_id)
    rows = ws.store.con.execute(f"SELECT sid FROM {sql} s WHERE listing = 'green_channel'")
    return {r[0] for r in rows.fetchall()}


def _green_for_the_base_band(folder: Path) -> Path:
    """The demo rulebook with its green channel also for band A, the band of its base (1000)."""
    text = demo_rulebook_path().read_text(encoding="utf-8")
    assert "trigger: {band: [AAA, AA]}" in text
    path = folder / "green-for-a.yaml"
    path.write_text(text.replace("trigger: {band: [AAA, AA]}", "trigger: {band: [AAA, AA, A]}"))
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    ws, _ = Workspace.init(tmp_path / "home")
    yield ws
    ws.close()


def test_only_rows_that_differ_from_the_base_are_stored_and_readers_see_every_member(
    ws: Workspace,
) -> None:
    _city(ws)
    snap = ws.score(AT, RECEIVED)
    rb = ws.rulebook_at(AT)
    sid = {n: ws.sid_of(resident_id(n)) for n in RESIDENTS}
    stored = _stored(ws, snap, "snapshot_scores", "score, band, band_capped")
    # The late filer, the donor and the debtor; not resident 3 (base score) nor 5 (not yet in).
    assert set(stored) == {sid[1], sid[2], sid[4]}
    assert snap.subjects == 4
    base, band = default_row(rb)
    assert (base, band) == (1000.0, "A")
    for n in (1, 2, 3, 4):
        x = ws.explain(resident_id(n), AT, RECEIVED)
        score, band_of, capped = stored.get(sid[n], (Decimal("1000.00"), band, False))
        assert (score, band_of, capped) == (x.score, x.band, x.band_capped_by_grave_sanction), n
    stats = ws.stats(snap)
    assert stats["subjects"] == 4 and sum(stats["bands"].values()) == 4
    scores = [ws.explain(resident_id(n), AT, RECEIVED).score for n in (1, 2, 3, 4)]
    assert stats["mean_score"] == round(float(sum(scores) / 4), 2)
    assert stats["bands"]["A"] == sum(
        ws.explain(resident_id(n), AT, RECEIVED).band == "A" for n in (1, 2, 3, 4)
    )
    assert stats["band_capped_by_grave_sanction"] == sum(
        ws.explain(resident_id(n), AT, RECEIVED).band_capped_by_grave_sanction for n in (1, 2, 3, 4)
    )


@pytest.mark.parametrize("tally", [True, False], ids=["tallies", "records"])
def test_band_benefits_of_the_base_band_reach_the_members_without_a_row(
    tmp_path: Path, tally: bool
) -> None:
    ws, _ = Workspace.init(tmp_path / "home", _green_for_the_base_band(tmp_path))
    try:
        _city(ws)
        sid = {n: ws.sid_of(resident_id(n)) for n in RESIDENTS}
        base = ws.score(AT, RECEIVED)
        green = _granted(ws, base)
        # Resident 3 has no score row, yet is in band A: granted. The debtor is not (a grave
        # sanction), nor is resident 5 (not in the population at AT).
        assert sid[3] not in _stored(ws, base, "snapshot_scores", "score")
        assert sid[3] in green and sid[4] not in green and sid[5] not in green
        for n in (1, 2, 3):
            decision = ws.check(resident_id(n), "deposit_free_rental", AT, RECEIVED)
            assert decision.allowed is (sid[n] in green), n
        # Later: resident 5 joins the population by its donation (a row: +5), and resident 1's
        # late filing has stopped counting (P1Y), so its row goes and the default's benefit
        # comes. Brought forward, as a full score.
        later = dt.datetime(2026, 12, 2)
        refuse = None if tally else (lambda *args: "asked not to")
        with (
            patch.object(snapshots, "CONSOLIDATE_SHARE", 1.0),
            patch.object(tallies, "why_not", refuse or tallies.why_not),
        ):
            # First a day passing alone (K unchanged: nobody joins): resident 1 is back in the
            # base's band, with no row, and its benefit comes from the population.
            passing = ws.engine.update(
                ws.rulebook_at(later), base, later, RECEIVED, full_share=None
            )
            update = ws.engine.update(ws.rulebook_at(later), base, later, LATER_K, full_share=None)
        assert passing.method == update.method == ("tallies" if tally else "records")
        assert passing.snapshot.subjects == 4
        assert_same_snapshot(ws.store.con, passing.snapshot, ws.score(later, RECEIVED))
        assert sid[1] in _granted(ws, passing.snapshot)
        assert update.snapshot.subjects == 5
        full = ws.score(later, LATER_K)
        assert_same_snapshot(ws.store.con, update.snapshot, full)
        assert sid[1] not in _stored(ws, update.snapshot, "snapshot_scores", "score")
        assert {sid[1], sid[3], sid[5]} <= _granted(ws, update.snapshot)
        assert {**ws.stats(update.snapshot), "snapshot_id": 0} == {
            **ws.stats(full),
            "snapshot_id": 0,
        }
    finally:
        ws.close()


def test_a_snapshot_stored_in_full_by_an_earlier_version_reads_the_same(ws: Workspace) -> None:
    """Stores scored before this change hold a row for every member. Brought forward, such a
    base gives what a full score gives, read as readers read it (default rows and missing rows
    alike), and so do its statistics."""
    _city(ws)
    base = ws.score(AT, RECEIVED)
    rb = ws.rulebook_at(AT)
    before = ws.stats(base)
    cur = ws.engine.evaluate(rb, AT, RECEIVED)
    try:
        members = {r[0] for r in cur.execute("SELECT sid FROM population").fetchall()}
    finally:
        cur.close()
    missing = members - set(_stored(ws, base, "snapshot_scores", "score"))
    assert missing == {ws.sid_of(resident_id(3))}
    score, band = default_row(rb)
    for sid in missing:  # as the earlier version stored it
        ws.store.con.execute(
            "INSERT INTO snapshot_scores VALUES (?, ?, ?, ?, false)",
            [base.snapshot_id, sid, Decimal(str(score)), band],
        )
    assert ws.stats(base) == before
    later = dt.datetime(2026, 12, 2)
    with patch.object(snapshots, "CONSOLIDATE_SHARE", 1.0):
        update = ws.score_incremental(later, LATER_K, full_share=None)
    full = ws.score(later, LATER_K)
    assert update.base_snapshot_id == base.snapshot_id and update.method == "tallies"
    default = (Decimal(str(score)), band, False)

    def read(snap: Snapshot) -> dict[int, Any]:
        rows = _stored(ws, snap, "snapshot_scores", "score, band, band_capped")
        return {sid: row for sid, row in rows.items() if tuple(row) != default}

    assert read(update.snapshot) == read(full)
    # Resident 3 kept its base row (not rescored), resident 1 lost its own (back to the base).
    assert ws.sid_of(resident_id(3)) in _stored(ws, update.snapshot, "snapshot_scores", "score")
    assert ws.sid_of(resident_id(1)) not in _stored(ws, update.snapshot, "snapshot_scores", "score")
    assert {**ws.stats(update.snapshot), "snapshot_id": 0} == {**ws.stats(full), "snapshot_id": 0}
