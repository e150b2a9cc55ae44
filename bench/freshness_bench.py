"""Benchmark: how soon a stored court record, settlement or overturned appeal reaches decisions.

Run from the repository root, on a home made by another benchmark (it works on a copy)::

    .venv/bin/python bench/freshness_bench.py --home bench/out/http-home-100000-8-0

For ``--rounds`` residents that nobody has listed, in the service's own process
(``civiscore.service.Service``, as ``civiscore serve`` runs it):

1. a court submits a judgment-default record (``Service.submit_records``); the time is from
   the call to the moment it returns, after which the eligibility check must say denied;
2. the court submits the settlement of that judgment; the check must say allowed again;
3. the resident appeals a second judgment-default record, and a reviewer overturns it
   (``Service.decide_appeal``); the check must say allowed again.

Each step is timed from its call until the decision served reflects it, and the check is
asserted after each step, so a stale answer fails the run. Target (issue "Scale"): within one
second of being stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from civiscore.api.keys import Party
from civiscore.ids import pseudonym
from civiscore.service import Service
from civiscore.timeutil import now_local

RAIL = Party("bench-rail", "service", None, ("high_speed_rail",), None)
COURTS = Party("bench-courts", "department", "courts", (), None)
REVIEWER = Party("bench-reviewer", "reviewer", None, (), None)


def submit(
    svc: Service, raw: str, day: dt.datetime, kind: str, record_id: str, reference: str
) -> None:
    row = {
        "record_id": record_id,
        "subject_id": raw,
        "kind": kind,
        "occurred_at": day.isoformat(),
        "reference": reference,
        "quantity": 50_000,
    }
    svc.submit_records(COURTS, [row])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=Path("bench/out/http-home-100000-8-0"))
    ap.add_argument("--city", type=Path, default=None, help="default: the home's city")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    city = args.city or Path(str(args.home).replace("http-home-", "city-"))
    ids = pq.read_table(city / "residents.parquet", columns=["subject_id"]).column(0)

    with tempfile.TemporaryDirectory(dir=args.home.parent) as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(args.home, home)
        svc = Service.open(home)
        svc.refresh()
        times: dict[str, list[float]] = {"record": [], "settlement": [], "overturn": []}
        asked = 0
        for raw in ids.to_pylist():
            if len(times["record"]) == args.rounds:
                break
            asked += 1
            if not svc.check(RAIL, raw, "high_speed_rail").decision.allowed:
                continue  # already listed
            n = len(times["record"])
            day = (now_local() - dt.timedelta(days=5)).replace(microsecond=0)
            ref = f"(2026)Bench{n}-{time.time_ns()}"

            t = time.perf_counter()
            submit(svc, raw, day, "court.judgment_default", f"BENCH-D-{ref}", ref)
            times["record"].append(time.perf_counter() - t)
            assert not svc.check(RAIL, raw, "high_speed_rail").decision.allowed

            t = time.perf_counter()
            submit(
                svc,
                raw,
                day + dt.timedelta(days=1),
                "court.judgment_settled",
                f"BENCH-S-{ref}",
                ref,
            )
            times["settlement"].append(time.perf_counter() - t)
            assert svc.check(RAIL, raw, "high_speed_rail").decision.allowed

            second = ref + "-2"
            submit(
                svc,
                raw,
                day + dt.timedelta(days=2),
                "court.judgment_default",
                f"BENCH-D2-{ref}",
                second,
            )
            assert not svc.check(RAIL, raw, "high_speed_rail").decision.allowed
            me = Party("bench-me", "subject", None, (), pseudonym(svc.pseudonym_key, raw))
            appeal = svc.file_appeal(
                me,
                department="courts",
                record_id=f"BENCH-D2-{ref}",
                listing=None,
                statement="paid before judgment",
            )
            t = time.perf_counter()
            svc.decide_appeal(REVIEWER, appeal.id, "overturn", "receipt predates the judgment")
            times["overturn"].append(time.perf_counter() - t)
            assert svc.check(RAIL, raw, "high_speed_rail").decision.allowed
        svc.close()

    print(f"{args.rounds} residents (asked {asked}); seconds from the call until served:")
    print("| step | median | max |")
    print("|---|---:|---:|")
    for step, ts in times.items():
        print(f"| {step} | {statistics.median(ts):.3f} | {max(ts):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
