"""The demo: a synthetic city from department files to explained decisions, embedded store."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from civiscore.api.keys import KeyProblem
from civiscore.ids import pseudonym_sql
from civiscore.service import SYSTEM, Operations, keep_rulebook_copy
from civiscore.settings import Settings
from civiscore.store import snapshots
from civiscore.synth.city import write_city
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace


def run_demo(home: Path, *, residents: int, seed: int, console: Console, err: Console) -> None:
    from civiscore import cli  # the demo prints exactly what the commands print

    city = home / "city"
    console.print(Rule("1. synthesise a city"))
    if (city / "residents.parquet").exists():
        console.print(f"reusing the synthetic city in {city} (delete it to make a new one)")
        files = sorted(p for p in city.iterdir() if p.stem not in ("residents", "organisations"))
        departments = {p.stem: p for p in files if p.suffix in (".csv", ".jsonl", ".parquet")}
    else:
        with cli._progress(False) as progress:
            task = progress.add_task("synthesising", total=residents + max(10, residents // 20))
            # The city's records run up to yesterday, so what the demo shows is what the
            # service answers today (`civiscore serve` decides as of now).
            written = write_city(
                city,
                residents=residents,
                seed=seed,
                end=now_local().date() - dt.timedelta(days=1),
                progress=lambda n: progress.advance(task, n),
            )
        departments = written.departments
        console.print(
            f"{residents:,} residents, {sum(written.rows.values()):,} department rows "
            f"({sum(written.bad_rows.values()):,} deliberately bad) in {city}"
        )

    console.print(Rule("2. init: store, pseudonym key, demo rulebook"))
    ws, res = Workspace.init(home)
    console.print(
        f"store {home / 'store.duckdb'} · key {res.key_file} · rulebook {res.rulebook_version}"
    )
    try:
        console.print(Rule("3. ingest each department's file"))
        summaries = []
        for dep, path in sorted(departments.items()):
            with cli._progress(False, bytes_mode=True) as progress:
                task = progress.add_task(f"{dep}: {path.name}", total=None)
                summaries.append(
                    ws.ingest(
                        dep,
                        path,
                        progress=cli._advance_bytes(progress, task),
                    )
                )
        cli._print_ingest(summaries)

        at = known = now_local()
        console.print(Rule(f"4. score the population as of now, {at:%Y-%m-%d %H:%M}"))
        snap = ws.score(at, known)
        console.print(f"snapshot {snap.snapshot_id}: {snap.subjects:,} subjects")

        console.print(Rule("5. stats"))
        cli._print_stats(ws.stats(snap))

        raw = _pick(ws, city, snap.snapshot_id, "high_speed_rail")
        if raw is None:
            err.print("no listed subject in this city; try more residents")
            return
        console.print(Rule(f"6. check {raw} for high_speed_rail"))
        cli._print_decision(ws.check(raw, "high_speed_rail", at, known))
        console.print(Rule(f"7. explain {raw}"))
        cli._print_explanation(ws.explain(raw, at, known))
        good = _pick(ws, city, snap.snapshot_id, "deposit_free_rental")
        if good is not None:
            console.print(Rule(f"8. a green-channel benefit: {good}"))
            cli._print_decision(ws.check(good, "deposit_free_rental", at, known))
        console.print(Rule("try it yourself"))
        console.print(
            f"civiscore --home {home} check {raw} high_speed_rail\n"
            f"civiscore --home {home} explain {raw} --json\n"
            f"civiscore --home {home} stats --json"
        )
        keys = _demo_keys(ws, raw, good)
    finally:
        ws.close()
    console.print(Rule("open the interface"))
    console.print(
        f"civiscore --home {home} serve      then open http://127.0.0.1:8000/ and sign in with a "
        f"key (kept in {home / DEMO_KEYS}; synthetic people only):"
    )
    for name, (role, key) in keys.items():
        console.print(f"  {role:<9} {name:<22} {key}", highlight=False, soft_wrap=True)


DEMO_KEYS = "demo-keys.json"


def _demo_keys(ws: Workspace, resident: str, beneficiary: str | None) -> dict[str, tuple[str, str]]:
    """A ready-made key for each role, created once and kept in the home (mode 0600).

    Keys are shown once by design; the demo keeps them in a file because its people are
    synthetic. A real operator hands each key to its party and keeps none.
    """
    path = ws.home / DEMO_KEYS
    if path.exists():
        return {k: (v[0], v[1]) for k, v in json.loads(path.read_text()).items()}
    keep_rulebook_copy(ws, now_local())
    ops = Operations(ws.home, Settings.from_env(), key=ws.key)
    wanted: dict[str, dict[str, Any]] = {
        "operator": {"role": "admin"},
        "reviewer": {"role": "reviewer"},
        "auditor": {"role": "auditor"},
        "rail-desk": {"role": "service", "services": ["high_speed_rail"]},
        "rental-desk": {"role": "service", "services": ["deposit_free_rental"]},
        "listed-resident": {"role": "subject", "subject_id": resident},
        "courts": {"role": "department", "department": "courts"},
    }
    if beneficiary is not None:
        wanted["green-channel-resident"] = {"role": "subject", "subject_id": beneficiary}
    keys: dict[str, tuple[str, str]] = {}
    try:
        for name, spec in wanted.items():
            try:
                key, party = ops.create_key_unchecked(actor=SYSTEM, name=name, **spec)
            except KeyProblem:
                continue  # made by an earlier demo whose key file was removed
            keys[name] = (party.role, key)
    finally:
        ops.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh, indent=2)
    return keys


def _pick(ws: Workspace, city: Path, snapshot_id: int, service: str) -> str | None:
    """A synthetic subject whose listing touches ``service`` (raw IDs are synthetic here)."""
    rb = ws.rulebook_at(now_local())
    ids = [
        lst.id
        for lst in rb.listings
        if service in {x.service for x in lst.restricts} | {x.service for x in lst.grants}
    ]
    people = [str(city / "residents.parquet"), str(city / "organisations.parquet")]
    rows = ws.store.con.execute(
        f"""
        SELECT c.subject_id
        FROM (SELECT subject_id, {pseudonym_sql(ws.key, "upper(subject_id)")} AS pseudonym
              FROM read_parquet($files)) c
        JOIN subjects s USING (pseudonym)
        JOIN {snapshots.resolved(ws.store.con, "snapshot_listings", snapshot_id)} l
          ON l.sid = s.sid
        WHERE list_contains($ids, l.listing)
        ORDER BY l.listing, c.pseudonym LIMIT 1
        """,
        {"files": people, "ids": ids},
    ).fetchall()
    return str(rows[0][0]) if rows else None
