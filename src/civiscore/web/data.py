"""What the pages show, assembled from the service: nothing here decides anything."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb

from civiscore.api.keys import Party
from civiscore.rights.explain import explain
from civiscore.rulebook.model import Rulebook
from civiscore.service import NotFound, Service
from civiscore.store import snapshots


def score_timeline(service: Service, party: Party, months: int = 12) -> list[tuple[dt.date, float]]:
    """The subject's score at the end of each of the last ``months`` months, as known now."""
    sid = service.own_sid(party)
    now = service.clock()
    out = []
    with service.lock:
        for back in range(months - 1, -1, -1):
            year, month = now.year, now.month - back
            while month <= 0:
                month += 12
                year -= 1
            end = (
                dt.datetime(year + month // 12, month % 12 + 1, 1) - dt.timedelta(microseconds=1)
                if back
                else now
            )
            x = explain(service.ws.engine, service.ws.rulebook_at(end), sid, end, now)
            out.append((end.date(), float(x.score)))
    return out


def safeguard_report(rb: Rulebook) -> list[dict[str, str]]:
    """Which contexts feed which restrictions and benefits, and why each is allowed."""
    rows = []
    for listing in rb.listings:
        trig = listing.trigger
        if trig.decision:
            dep_kind = rb.kind(trig.decision)
            dep = rb.departments[dep_kind[0]] if dep_kind else None
            source = f"decision {trig.decision}"
            why = (
                f"a {dep.authority} decision ({dep.name}) with a fixed maximum of "
                f"{listing.duration}"
                if dep and listing.duration
                else "a decision"
            )
        elif trig.conduct:
            kind = rb.kind(trig.conduct.kind)
            ctx = kind[1].context if kind else "?"
            source = f"{trig.conduct.count} × {trig.conduct.kind} within {trig.conduct.within}"
            why = f"conduct in the {ctx} context, for {listing.duration}"
        else:
            source = f"band {' or '.join(trig.band or [])}"
            why = "a band may only grant benefits, never restrict"
        for r in listing.restricts:
            rows.append(
                {
                    "listing": listing.id,
                    "source": source,
                    "effect": "restricts",
                    "service": r.service,
                    "service_context": rb.services[r.service].context,
                    "why": why,
                    "legal_basis": r.legal_basis,
                }
            )
        for g in listing.grants:
            rows.append(
                {
                    "listing": listing.id,
                    "source": source,
                    "effect": "grants",
                    "service": g.service,
                    "service_context": rb.services[g.service].context,
                    "why": why + "; withheld while a grave sanction is active",
                    "legal_basis": g.legal_basis,
                }
            )
    return rows


def _listing_history(con: duckdb.DuckDBPyConnection) -> list[tuple[dt.datetime, str, int]]:
    """(as of, listing, subjects listed) for each as-of time, from its latest snapshot (deltas
    resolved through their base)."""
    out: list[tuple[dt.datetime, str, int]] = []
    for as_of, snapshot_id in con.execute(
        "SELECT as_of, max(snapshot_id) FROM snapshots GROUP BY as_of ORDER BY as_of"
    ).fetchall():
        listed = snapshots.resolved(con, "snapshot_listings", int(snapshot_id))
        out += [
            (as_of, str(listing), int(n))
            for listing, n in con.execute(
                f"SELECT listing, count(DISTINCT sid) FROM {listed} l "
                "GROUP BY listing ORDER BY listing"
            ).fetchall()
        ]
    return out


def operator_overview(service: Service) -> dict[str, Any]:
    """The population at a glance, department feeds and the rulebook, for the operator."""
    ws = service.ws
    with service.lock:
        snapshot = ws.store.latest_snapshot()
        stats = ws.stats(snapshot) if snapshot is not None else None
        con = ws.store.con
        history = _listing_history(con)
        feeds = con.execute(
            """SELECT department, count(*) AS files, sum(rows), sum(accepted), sum(duplicates),
                      sum(rejected), max(received_at),
                      arg_max(rejects_file, received_at) FILTER (rejects_file IS NOT NULL)
               FROM ingest_runs WHERE finished_at IS NOT NULL
               GROUP BY department ORDER BY department"""
        ).fetchall()
    rb = service.rulebook()
    return {
        "snapshot": snapshot,
        "stats": stats,
        "history": history,
        "feeds": [
            {
                "department": d,
                "files": f,
                "rows": r or 0,
                "accepted": a or 0,
                "duplicates": du or 0,
                "rejected": rej or 0,
                "last_received": last,
                "rejects_file": Path(rf).name if rf else None,
            }
            for d, f, r, a, du, rej, last, rf in feeds
        ],
        "rulebook": rb,
        "safeguards": safeguard_report(rb),
        "suspended": service.enforcement_suspended(),
    }


def rejects_path(service: Service, department: str, name: str) -> Path:
    """A rejects file under the home, refusing any path that would leave it."""
    base = (service.home / "rejects").resolve()
    path = (base / department / name).resolve()
    if base not in path.parents or not path.is_file() or not path.name.endswith(".rejects.csv"):
        raise NotFound(f"no rejects file {department}/{name}")
    return path
