"""Golden cases for the demo rulebook: records in, scores, listings and decisions out.

Each file in tests/golden/ holds cases. Subjects are aliases: ``P…`` residents, ``O…``
organisations. Dates without a time are the start of that day for records and the end of
that day for ``at``/``known_at`` (as on the command line).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from civiscore.timeutil import parse_moment
from civiscore.workspace import Workspace
from tests.utils import ingest_rows, org_id, resident_id

GOLDEN = Path(__file__).parent / "golden"
FAR_FUTURE = dt.datetime(2100, 1, 1)


def _cases() -> list[Any]:
    out = []
    for path in sorted(GOLDEN.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            out.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return out


def _subject(alias: str) -> str:
    n = int(alias[1:])
    return org_id(n) if alias.startswith("O") else resident_id(n)


def _moment(value: Any) -> dt.datetime:
    return parse_moment(str(value))


@pytest.mark.parametrize("case", _cases())
def test_golden(case: dict[str, Any], ws: Workspace) -> None:
    by_batch: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in case["records"]:
        received = str(rec.get("received_at", "2099-01-01"))
        row = {k: v for k, v in rec.items() if k not in ("department", "subject", "received_at")}
        row["subject_id"] = _subject(rec["subject"])
        row["occurred_at"] = str(rec["occurred_at"])
        by_batch.setdefault((rec["department"], received), []).append(row)
    for (department, received), rows in by_batch.items():
        summary = ingest_rows(ws, department, rows, received_at=_moment(received))
        assert summary.rejected == 0, f"golden records must be valid: {summary.as_dict()}"
    for exp in case["expect"]:
        at = _moment(exp["at"])
        known = _moment(exp.get("known_at", "2099-12-31"))
        raw = _subject(exp["subject"])
        x = ws.explain(raw, at, known)
        where = f"{case['name']} / {exp['subject']} at {exp['at']}"
        if "score" in exp:
            assert x.score == Decimal(str(exp["score"])), where
        assert x.score == x.base + sum((line.points for line in x.lines), Decimal(0)), where
        if "band" in exp:
            assert x.band == exp["band"], where
        if "listings" in exp:
            assert sorted(lst.listing for lst in x.listings) == sorted(exp["listings"]), where
        if "benefits" in exp:
            assert x.benefits == sorted(exp["benefits"]), where
        if "contexts" in exp:
            assert {k: float(v) for k, v in x.contexts.items()} == exp["contexts"], where
        if "until" in exp:
            assert [str(lst.until) for lst in x.listings] == [str(u) for u in exp["until"]], where
        if "not_counted" in exp:
            got = {n.record_id: n.reason for n in x.not_counted}
            for rid, fragment in exp["not_counted"].items():
                assert fragment in got.get(rid, ""), f"{where}: {rid}: {got.get(rid)}"
        for service in exp.get("denied", []):
            d = ws.check(raw, service, at, known)
            assert not d.allowed, f"{where}: {service} should be denied"
            assert all(r.legal_basis and r.appeal for r in d.reasons)
        for service in exp.get("allowed", []):
            assert ws.check(raw, service, at, known).allowed, f"{where}: {service} allowed"
