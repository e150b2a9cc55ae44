"""Decision- and conduct-triggered redlists grant benefits, but never while a grave sanction of
the same subject runs; the same in a full score and brought forward by a daily update."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from unittest.mock import patch

import pytest

from civiscore.engine import tallies
from civiscore.rulebook.load import demo_rulebook_path
from civiscore.store import snapshots
from civiscore.store.base import Snapshot
from civiscore.workspace import Workspace
from tests.test_incremental import assert_same_snapshot
from tests.utils import ingest_rows, resident_id

REDLISTS = """
  - id: volunteer
    name: Recognised volunteer
    list: redlist
    trigger: {decision: civic.volunteer_hours}
    duration: P1Y
    legal_basis: Guo Fa [2016] No. 33, part II (joint incentives)
    illustrative: true
    grants:
      - {service: fast_track_permits, legal_basis: "Guo Fa [2016] No. 33, part II(2)"}
  - id: regular_donor
    name: Regular blood donor
    list: redlist
    trigger:
      conduct: {kind: civic.blood_donation, count: 2, within: P12M}
    duration: P1Y
    legal_basis: Blood Donation Law, Art. 6 (recognition of voluntary donors)
    illustrative: true
    grants:
      - {service: deposit_free_rental, legal_basis: "Guo Fa [2016] No. 33, part II(5)"}
"""
RECEIVED = dt.datetime(2026, 1, 10)
AT = dt.datetime(2026, 1, 31)
LATER_K = dt.datetime(2026, 2, 10)
LATER = dt.datetime(2026, 2, 5)


def with_redlists(folder: Path) -> Path:
    """The demo rulebook with a decision-triggered and a conduct-triggered redlist."""
    text = demo_rulebook_path().read_text(encoding="utf-8")
    assert "\nlistings:\n" in text
    path = folder / "redlists.yaml"
    path.write_text(text.replace("\nlistings:\n", "\nlistings:" + REDLISTS, 1))
    return path


def _redlisted(ws: Workspace, snap: Snapshot) -> dict[int, set[str]]:
    sql = snapshots.resolved(ws.store.con, "snapshot_listings", snap.snapshot_id)
    rows = ws.store.con.execute(
        f"SELECT sid, listing FROM {sql} s WHERE listing IN ('volunteer', 'regular_donor')"
    ).fetchall()
    out: dict[int, set[str]] = {}
    for sid, listing in rows:
        out.setdefault(sid, set()).add(listing)
    return out


def _merits(n: int) -> list[dict[str, str]]:
    return [
        {
            "record_id": f"V{n}",
            "subject_id": resident_id(n),
            "kind": "civic.volunteer_hours",
            "occurred_at": "2025-10-01",
            "quantity": "4",
        },
        *(
            {
                "record_id": f"B{n}-{month}",
                "subject_id": resident_id(n),
                "kind": "civic.blood_donation",
                "occurred_at": f"2025-{month:02d}-01",
            }
            for month in (9, 12)
        ),
    ]


def _judgment(n: int, on: str) -> dict[str, str]:
    return {
        "record_id": f"J{n}",
        "subject_id": resident_id(n),
        "kind": "court.judgment_default",
        "occurred_at": on,
        "reference": f"J{n}",
    }


@pytest.mark.parametrize("tally", [True, False], ids=["tallies", "records"])
def test_a_grave_sanction_withholds_every_redlist_of_its_subject(
    tmp_path: Path, tally: bool
) -> None:
    ws, _ = Workspace.init(tmp_path / "home", with_redlists(tmp_path))
    try:
        # Residents 1 and 2 did the same good deeds; 2 also lost a court case. Resident 3 will.
        merits = [row for n in (1, 2, 3) for row in _merits(n)]
        ingest_rows(
            ws,
            "civil_affairs",
            [r for r in merits if r["kind"] != "civic.blood_donation"],
            received_at=RECEIVED,
        )
        ingest_rows(
            ws,
            "blood_service",
            [r for r in merits if r["kind"] == "civic.blood_donation"],
            received_at=RECEIVED,
        )
        ingest_rows(ws, "courts", [_judgment(2, "2025-12-15")], received_at=RECEIVED)
        sid = {n: ws.sid_of(resident_id(n)) for n in (1, 2, 3)}
        base = ws.score(AT, RECEIVED)
        both = {"volunteer", "regular_donor"}
        assert _redlisted(ws, base) == {sid[1]: both, sid[3]: both}
        assert not ws.check(resident_id(2), "fast_track_permits", AT, RECEIVED).allowed
        assert ws.check(resident_id(1), "fast_track_permits", AT, RECEIVED).allowed
        # Resident 3's judgment arrives: its redlists go while the sanction runs, and the
        # update that brings the base forward says so as a full score does.
        ingest_rows(ws, "courts", [_judgment(3, "2026-02-01")], received_at=LATER_K)
        refuse = None if tally else (lambda *args: "asked not to")
        with patch.object(tallies, "why_not", refuse or tallies.why_not):
            update = ws.engine.update(ws.rulebook_at(LATER), base, LATER, LATER_K, full_share=None)
        assert update.method == ("tallies" if tally else "records")
        assert _redlisted(ws, update.snapshot) == {sid[1]: both}
        assert_same_snapshot(ws.store.con, update.snapshot, ws.score(LATER, LATER_K))
    finally:
        ws.close()
