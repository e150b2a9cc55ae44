"""Run rulebooks over a synthetic city month by month, scoring with the production plan.

Each simulated rulebook (a *scenario*) gets its own in-memory record store. Every month the
behaviour model (:mod:`civiscore.lab.behaviour`) draws that month's records, given who the
scenario had blacklisted at the previous month-end; they are appended to the store's ``records``
table, and :meth:`civiscore.engine.duckdb_engine.DuckDBEngine.evaluate` runs the plan of
:mod:`civiscore.engine.plan` for the month-end — the very stages that score real residents —
with no snapshot written. The month's figures are then read off the plan's stage tables with
set-based SQL. The loop is per month and per scenario; nothing loops per resident or record.

The hidden attributes (district, age band, income decile, hukou) live in a separate in-memory
database attached as ``lab``, never in the store's schema: the plan reads ``records`` only, and
the rulebook cannot name a table. The lab joins the plan's output to them afterwards.

Residents without any record are not in the plan's ``scores`` stage (the population is whoever
has records); the lab counts them at the rulebook's ``base`` with the band the plan's own band
function gives that score, as a snapshot reader would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.engine.incremental import horizons, shift_days
from civiscore.engine.plan import band_sql, interval
from civiscore.lab import behaviour
from civiscore.lab.behaviour import OpenJudgments, Parameters, Population
from civiscore.rulebook.load import RulebookProblem
from civiscore.rulebook.model import Duration, Rulebook
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.timeutil import sql_timestamp

Role = Literal["primary", "compare", "sweep"]
ATTRIBUTES = ("district", "age_band", "income_decile", "hukou")
# Four-fifths rule: a group's rate of a favourable outcome below 4/5 of the best group's rate is
# evidence of adverse impact. For an adverse outcome the same test compares the least-affected
# group's rate with the group's: below 0.8 when the group is listed 1.25 times as often or more.
FOUR_FIFTHS = 0.8
# A group is a reference for the four-fifths test if this many affected are expected in it.
MIN_EXPECTED = 5
# Two-sided 95 % critical value of the standard normal distribution.
Z_95 = 1.96
# Months between two prunings of inert records (any cadence gives the same tables).
PRUNE_EVERY = 6
# Grave offences with no rule window of their own are followed for three years.
DEFAULT_WINDOW = Duration(months=36, days=0, text="P3Y")


@dataclass(frozen=True)
class Scenario:
    """One rulebook to simulate, and where it came from."""

    label: str
    rulebook: Rulebook
    source: str
    sha256: str
    warnings: tuple[RulebookProblem, ...] = ()
    role: Role = "primary"
    sweep_value: str | None = None

    @classmethod
    def of(
        cls,
        label: str,
        rb: Rulebook,
        source: str,
        text: str,
        warnings: Sequence[RulebookProblem] = (),
        role: Role = "primary",
        sweep_value: str | None = None,
    ) -> Scenario:
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(label, rb, source, digest, tuple(warnings), role, sweep_value)


@dataclass
class Result:
    """The simulation's tables (one row per scenario and month, or scenario and group) and
    what produced them."""

    tables: dict[str, pa.Table]
    meta: dict[str, Any]
    scenarios: list[Scenario]
    # Per scenario, the final month's per-resident state (sid, score, band, listings), for
    # ``rulebook diff``; never written to disk.
    final_state: dict[str, pa.Table] = field(default_factory=dict)


@dataclass
class _Run:
    """A scenario's store, engine and feedback state during the simulation."""

    scenario: Scenario
    store: DuckDBStore
    engine: DuckDBEngine
    listed: np.ndarray
    judgments: OpenJudgments
    good: list[str]
    base_band: str
    restricts: list[tuple[str, str]]
    seconds: dict[str, float] = field(default_factory=dict)

    def lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - since
        return now


def good_bands(rb: Rulebook) -> list[str]:
    """Band A or better: every A grade (the grades a grave sanction must cap below)."""
    return [b.band for b in rb.bands if b.band.startswith("A")]


def band_of(rb: Rulebook, score: float) -> str:
    """The band of a score, as the plan's band function computes it.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> band_of(load(demo_rulebook_path()), 1000)
    'A'
    """
    for b in rb.bands:
        if b.min is not None and score >= b.min:
            return b.band
    return rb.bands[-1].band


def grave_offences(rb: Rulebook) -> dict[str, Duration]:
    """Kinds of grave rules, each with the window in which an offence counts as recent."""
    out: dict[str, Duration] = {}
    for rule in rb.rules:
        if rule.severity == "grave":
            out.setdefault(rule.kind, rule.valid_for or DEFAULT_WINDOW)
    return out


def _prune(run: _Run, end: dt.datetime, offences: dict[str, Duration]) -> None:
    """Delete the records that can change no later answer.

    See :func:`civiscore.engine.incremental.horizons`.

    Grave offences are also kept for their window, which section 4 reads from the records.
    """
    T = sql_timestamp(end)
    known = horizons(run.scenario.rulebook)
    for kind, window in offences.items():
        if kind in known and known[kind] is not None:
            known[kind] = max(known[kind] or 0, shift_days(window.months, window.days)[1])
        elif kind not in known:
            known[kind] = shift_days(window.months, window.days)[1]
    finite = [(k, d) for k, d in known.items() if d is not None]
    conditions = [f"(kind = {_q(k)} AND occurred_at + INTERVAL {d} DAY <= {T})" for k, d in finite]
    # A kind no rule or listing mentions never matters to the plan.
    names = ", ".join(_q(k) for k in known) or "NULL"
    conditions.append(f"kind NOT IN ({names})")
    # Rebuilt rather than deleted from: DuckDB scans deleted rows and filters them out, so a
    # DELETE would save memory but not the plan's time.
    con = run.store.con
    con.execute(
        "CREATE TABLE records_kept AS SELECT * FROM records WHERE NOT ("
        + " OR ".join(conditions)
        + ") ORDER BY occurred_at"
    )
    con.execute("DROP TABLE records")
    con.execute("ALTER TABLE records_kept RENAME TO records")


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _values(rows: Sequence[tuple[str, str]], names: tuple[str, str]) -> str:
    if not rows:
        return f"(SELECT NULL::VARCHAR AS {names[0]}, NULL::VARCHAR AS {names[1]} WHERE false)"
    body = ", ".join(f"({_q(a)}, {_q(b)})" for a, b in rows)
    return f"(SELECT * FROM (VALUES {body}) AS v({names[0]}, {names[1]}))"


def _open(scenario: Scenario, pop: Population, threads: int | None) -> _Run:
    store = DuckDBStore.memory()
    con = store.con
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("ATTACH ':memory:' AS lab")
    con.register("residents_in", pop.table())
    con.execute("CREATE TABLE lab.residents AS SELECT * FROM residents_in")
    con.unregister("residents_in")
    con.execute(
        "CREATE TABLE lab.listing_rows (month INTEGER, sid BIGINT, listing VARCHAR, "
        "since TIMESTAMP, until TIMESTAMP, record_id VARCHAR)"
    )
    con.execute("CREATE TABLE lab.ever_benefit (sid BIGINT)")
    rb = scenario.rulebook
    restricts = [(lst.id, r.service) for lst in rb.listings for r in lst.restricts]
    return _Run(
        scenario=scenario,
        store=store,
        engine=DuckDBEngine(store),
        listed=np.zeros(pop.n, dtype=bool),
        judgments=OpenJudgments(),
        good=good_bands(rb),
        base_band=band_of(rb, rb.base),
        restricts=restricts,
    )


def simulate(
    scenarios: Sequence[Scenario],
    *,
    residents: int,
    years: int,
    seed: int,
    start: dt.date,
    params: Parameters = behaviour.PARAMETERS,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    keep_final_state: bool = False,
    prune: bool = True,
) -> Result:
    """Simulate every scenario on the same city and the same behaviour model.

    Args:
        scenarios: The rulebooks to run; labels must be unique.
        residents: Size of the synthetic city.
        years: Reported years; ``params.warmup_years`` more are simulated before them.
        seed: Seed of the city and of every behaviour draw.
        start: First day of the first reported month (a month's first day).
        params: The behaviour and appeal parameters.
        progress: Called after each month with (months done, months in all).
        threads: DuckDB threads per store (default: DuckDB's own, the number of cores).
        keep_final_state: Keep each scenario's per-resident state at the last month-end.
        prune: Every :data:`PRUNE_EVERY` months, drop the records whose every clock has run
            out (same results, less work; see :func:`civiscore.engine.incremental.horizons`).

    Returns:
        The tables described in ``docs/policy-lab.md`` and the run's metadata.
    """
    labels = [s.label for s in scenarios]
    if len(set(labels)) != len(labels):
        raise ValueError(f"scenario labels must be unique, got {labels}")
    if residents < 1 or years < 1:
        raise ValueError("simulate at least one resident for at least one year")
    if start.day != 1:
        raise ValueError(f"start must be the first day of a month, got {start}")
    clock = time.perf_counter()
    # CPU time of this process (every DuckDB thread included): unlike the wall clock it does not
    # count the time a shared machine gives to other work.
    cpu = time.process_time()
    pop = behaviour.population(residents, seed)
    runs = [_open(s, pop, threads) for s in scenarios]
    offences = grave_offences(scenarios[0].rulebook)
    first = -12 * params.warmup_years
    months = range(first, 12 * years)
    rows: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("bands", "scores", "listings", "refusals", "offsetting", "histogram")
    }
    setup = time.perf_counter() - clock
    try:
        for done, month in enumerate(months, start=1):
            _, end = behaviour.month_bounds(start, month)
            label = f"{end:%Y-%m}"
            for run in runs:
                _month(run, pop, params, seed, start, month, end, label, offences, rows, years)
                if prune and month % PRUNE_EVERY == PRUNE_EVERY - 1:
                    t = time.perf_counter()
                    _prune(run, end, offences)
                    run.lap("prune", t)
            if progress is not None:
                progress(done, len(months))
        tables = _tables(rows)
        tables.update(_after(runs, params, start, years))
        final = {r.scenario.label: _final_state(r) for r in runs} if keep_final_state else {}
    finally:
        for run in runs:
            run.store.close()
    meta = {
        "residents": residents,
        "years": years,
        "warmup_years": params.warmup_years,
        "seed": seed,
        "start": start.isoformat(),
        "months": 12 * years,
        "parameters": params.model_dump(),
        "population_seconds": round(setup, 3),
        "wall_seconds": round(time.perf_counter() - clock, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "seconds": {r.scenario.label: {k: round(v, 3) for k, v in r.seconds.items()} for r in runs},
        "grave_offences": {k: str(d) for k, d in offences.items()},
    }
    return Result(tables, meta, list(scenarios), final)


def _month(
    run: _Run,
    pop: Population,
    params: Parameters,
    seed: int,
    start: dt.date,
    month: int,
    end: dt.datetime,
    label: str,
    offences: dict[str, Duration],
    rows: dict[str, list[dict[str, Any]]],
    years: int,
) -> None:
    t = time.perf_counter()
    records = behaviour.month_records(pop, params, seed, month, start, run.listed, run.judgments)
    t = run.lap("behaviour", t)
    con = run.store.con
    con.register("month_in", records)
    con.execute(
        "INSERT INTO records SELECT department, record_id, sid, kind, occurred_at, quantity, "
        "reference, NULL, occurred_at, ? FROM month_in",
        [month],
    )
    con.unregister("month_in")
    t = run.lap("store", t)
    rb = run.scenario.rulebook
    # The production plan for this month-end, everything known by then.
    cur = run.engine.evaluate(rb, end, end)
    try:
        t = run.lap("plan", t)
        _collect(run, cur, month, end, label, offences, rows, years)
        run.lap("figures", t)
    finally:
        cur.close()


def _collect(
    run: _Run,
    cur: duckdb.DuckDBPyConnection,
    month: int,
    end: dt.datetime,
    label: str,
    offences: dict[str, Duration],
    rows: dict[str, list[dict[str, Any]]],
    years: int,
) -> None:
    rb = run.scenario.rulebook
    name = run.scenario.label
    T = sql_timestamp(end)
    cur.execute(
        """CREATE TEMP TABLE bl AS
        SELECT DISTINCT sid, listing, since, until, record_id FROM (
          SELECT sid, listing, list, since, until, record_id FROM decision_listings
          UNION ALL SELECT sid, listing, list, since, until, record_id FROM conduct_listings
          UNION ALL SELECT sid, listing, list, since, until, record_id FROM benefits
        ) WHERE list = 'blacklist'"""
    )
    listed = cur.execute("SELECT DISTINCT sid FROM bl").fetchnumpy()["sid"]
    run.listed[:] = False
    run.listed[np.asarray(listed, dtype=np.int64)] = True
    if month < -1:
        return  # warm-up: only the feedback state matters, and month -1 for "new" listings
    cur.execute(f"INSERT INTO lab.listing_rows SELECT {month}, * FROM bl")
    if month < 0:
        return
    cur.execute(
        "INSERT INTO lab.ever_benefit SELECT DISTINCT sid FROM benefits WHERE list = 'redlist' "
        "AND sid NOT IN (SELECT sid FROM lab.ever_benefit)"
    )
    base = f"CAST({rb.base!r} AS DECIMAL(18, 2))"
    cur.execute(
        f"""CREATE TEMP TABLE pop AS
        SELECT r.sid, coalesce(s.score, {base}) AS score,
               coalesce(s.band, {band_sql(rb, base)}) AS band,
               coalesce(s.grave_active, false) AS grave_active
        FROM lab.residents r LEFT JOIN scores s USING (sid)"""
    )
    common = {"rulebook": name, "month": month, "month_end": label}
    n = cur.execute("SELECT count(*) FROM pop").fetchall()[0][0]
    counts = dict(cur.execute("SELECT band, count(*) FROM pop GROUP BY band").fetchall())
    for b in rb.band_order():
        residents = int(counts.get(b, 0))
        rows["bands"].append({**common, "band": b, "residents": residents, "share": residents / n})
    q = cur.execute(
        # Exact decimal sums: a float mean would depend on the order rows arrive in.
        "SELECT CAST(sum(score) AS DOUBLE) / count(*), "
        "quantile_cont(score::DOUBLE, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]), "
        "count(*) FILTER (grave_active) FROM pop"
    ).fetchall()[0]
    quantiles = dict(zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"), q[1], strict=True))
    rows["scores"].append(
        {**common, "mean": float(q[0]), **{k: float(v) for k, v in quantiles.items()}}
    )
    active = dict(
        cur.execute("SELECT listing, count(DISTINCT sid) FROM bl GROUP BY listing").fetchall()
    )
    new = dict(
        cur.execute(
            f"""SELECT listing, count(*) FROM bl b WHERE NOT EXISTS (
              SELECT 1 FROM lab.listing_rows p WHERE p.month = {month - 1} AND p.sid = b.sid
                AND p.listing = b.listing AND p.record_id IS NOT DISTINCT FROM b.record_id)
            GROUP BY listing"""
        ).fetchall()
    )
    red = dict(
        cur.execute(
            "SELECT listing, count(DISTINCT sid) FROM benefits WHERE list = 'redlist' "
            "GROUP BY listing"
        ).fetchall()
    )
    for lst in rb.listings:
        source = active if lst.list == "blacklist" else red
        rows["listings"].append(
            {
                **common,
                "listing": lst.id,
                "list": lst.list,
                "residents": int(source.get(lst.id, 0)),
                "new_decisions": int(new.get(lst.id, 0)) if lst.list == "blacklist" else 0,
            }
        )
    refused = dict(
        cur.execute(
            f"SELECT v.service, count(DISTINCT b.sid) FROM bl b JOIN "
            f"{_values(run.restricts, ('listing', 'service'))} v USING (listing) "
            "GROUP BY v.service"
        ).fetchall()
    )
    for svc, spec in rb.services.items():
        if spec.kind == "restriction":
            rows["refusals"].append({**common, "service": svc, "refused": int(refused.get(svc, 0))})
    good = ", ".join(_q(b) for b in run.good) or "NULL"
    window = " OR ".join(
        f"(kind = {_q(k)} AND occurred_at + {interval(d)} > {T})" for k, d in offences.items()
    )
    found: dict[str, tuple[int, ...]] = {}
    if window:
        for kind, *figures in cur.execute(
            f"""WITH off AS (
              SELECT DISTINCT kind, sid FROM records
              WHERE retracts IS NULL AND occurred_at <= {T} AND ({window})
            )
            SELECT o.kind, count(*), count(*) FILTER (p.band IN ({good})),
                   count(*) FILTER (p.grave_active),
                   count(*) FILTER (p.grave_active AND p.band IN ({good}))
            FROM off o JOIN pop p USING (sid) GROUP BY o.kind"""
        ).fetchall():
            found[kind] = tuple(int(f) for f in figures)
    anyone = cur.execute(
        f"SELECT count(*) FILTER (grave_active), "
        f"count(*) FILTER (grave_active AND band IN ({good})) FROM pop"
    ).fetchall()[0]
    for kind in offences:
        o, g, ga, gag = found.get(kind, (0, 0, 0, 0))
        rows["offsetting"].append(
            {
                **common,
                "offence": kind,
                "offenders": o,
                "in_good_band": g,
                "grave_sanction_active": ga,
                "sanctioned_in_good_band": gag,
            }
        )
    rows["offsetting"].append(
        {
            **common,
            "offence": "(any active grave sanction)",
            "offenders": int(anyone[0]),
            "in_good_band": int(anyone[1]),
            "grave_sanction_active": int(anyone[0]),
            "sanctioned_in_good_band": int(anyone[1]),
        }
    )
    if month == 12 * years - 1:
        cur.execute("CREATE TABLE lab.final AS SELECT sid, score::DOUBLE AS score, band FROM pop")
        for score_bin, residents in cur.execute(
            "SELECT floor(score::DOUBLE / 10) * 10 AS b, count(*) FROM pop GROUP BY b ORDER BY b"
        ).fetchall():
            rows["histogram"].append(
                {"rulebook": name, "score_from": float(score_bin), "residents": int(residents)}
            )


def _tables(rows: dict[str, list[dict[str, Any]]]) -> dict[str, pa.Table]:
    names = {"histogram": "score_histogram"}
    return {names.get(k, k): pa.Table.from_pylist(v) for k, v in rows.items() if v}


def _after(runs: list[_Run], params: Parameters, start: dt.date, years: int) -> dict[str, pa.Table]:
    """Tables computed once the months are done: groups, listing spells, appeals."""
    groups: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    spells: list[dict[str, Any]] = []
    appeals: list[dict[str, Any]] = []
    last = 12 * years - 1
    for run in runs:
        groups += _groups(run)
        refusals += _group_refusals(run)
        spells += _spells(run, start, last)
        appeals += _appeals(run, params, start, years)
    return {
        "groups": pa.Table.from_pylist(groups),
        "group_refusals": pa.Table.from_pylist(refusals),
        "listing_spells": pa.Table.from_pylist(spells),
        "appeals": pa.Table.from_pylist(appeals),
    }


def _by_group(select: str) -> str:
    """Residents unpivoted to (sid, attribute, grp), one row per attribute."""
    parts = [
        f"SELECT sid, '{a}' AS attribute, CAST({a} AS VARCHAR) AS grp FROM lab.residents"
        for a in ATTRIBUTES
    ]
    return select.replace("$groups", "(" + " UNION ALL ".join(parts) + ")")


def _group_key(attribute: str, group: str) -> tuple[str, float, str]:
    order = ATTRIBUTES.index(attribute)
    number = float(group) if group.isdigit() else 0.0
    return (str(order), number, group)


def _groups(run: _Run) -> list[dict[str, Any]]:
    con = run.store.con
    result = con.execute(
        _by_group(
            """WITH listed AS (SELECT DISTINCT sid FROM lab.listing_rows WHERE month >= 0)
            SELECT g.attribute, g.grp, count(*), count(l.sid), count(b.sid)
            FROM $groups g LEFT JOIN listed l USING (sid)
            LEFT JOIN (SELECT DISTINCT sid FROM lab.ever_benefit) b USING (sid)
            GROUP BY g.attribute, g.grp"""
        )
    ).fetchall()
    total = {a: 0 for a in ATTRIBUTES}
    listed_total = {a: 0 for a in ATTRIBUTES}
    for attribute, _, n, listed, _ in result:
        total[attribute] += n
        listed_total[attribute] += listed
    rows = []
    for attribute, group, n, listed, benefit in sorted(
        result, key=lambda r: _group_key(r[0], r[1])
    ):
        rows.append(
            {
                "rulebook": run.scenario.label,
                "attribute": attribute,
                "group": group,
                "residents": int(n),
                "population_share": n / total[attribute],
                "listed": int(listed),
                "listing_rate": listed / n,
                "share_of_listed": listed / listed_total[attribute]
                if listed_total[attribute]
                else 0.0,
                "benefit": int(benefit),
                "benefit_rate": benefit / n,
            }
        )
    _ratios(rows, "listed", "listing_rate", "listing_ratio", "listing_flagged", adverse=True)
    _ratios(rows, "benefit", "benefit_rate", "benefit_ratio", "benefit_flagged", adverse=False)
    return rows


def _ratios(
    rows: list[dict[str, Any]], count: str, rate: str, ratio: str, flag: str, *, adverse: bool
) -> None:
    """The four-fifths test within each attribute (and service, when rows carry one).

    Favourable outcome: the group's rate over the highest group's rate. Adverse outcome: the
    lowest group's rate over the group's rate. The reference group is chosen among groups big
    enough to expect :data:`MIN_EXPECTED` affected residents at the overall rate, so a tiny
    group with no one listed by chance does not make every other group look affected.

    A ratio below 0.8 is flagged only when the group also differs from the rest of the
    population in the same direction with statistical significance (two-proportion z-test,
    |z| >= 1.96); ``<ratio>_z`` keeps that z statistic (positive: more often affected).
    """
    keys = sorted({(r["attribute"], r.get("service")) for r in rows}, key=str)
    for key in keys:
        same = [r for r in rows if (r["attribute"], r.get("service")) == key]
        hits = sum(r[count] for r in same)
        people = sum(r["residents"] for r in same)
        overall = hits / people if people else 0.0
        big = [r for r in same if r["residents"] * overall >= MIN_EXPECTED] or same
        reference = (min if adverse else max)(big, key=lambda r: r[rate])[rate]
        for r in same:
            if adverse:
                value = min(1.0, reference / r[rate]) if r[rate] > 0 else 1.0
            else:
                value = min(1.0, r[rate] / reference) if reference > 0 else 1.0
            z = two_proportion_z(r[count], r["residents"], hits - r[count], people - r["residents"])
            against = z if adverse else -z
            r[ratio] = value
            r[f"{ratio}_z"] = z
            r[flag] = bool(value < FOUR_FIFTHS and against >= Z_95)


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """The z statistic of the difference between two proportions (pooled standard error).

    >>> round(two_proportion_z(60, 1000, 30, 1000), 2)
    3.24
    >>> two_proportion_z(0, 10, 0, 10)
    0.0
    """
    pooled = (hits_a + hits_b) / (n_a + n_b) if n_a + n_b else 0.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / max(n_a, 1) + 1 / max(n_b, 1)))
    return 0.0 if se == 0 else (hits_a / max(n_a, 1) - hits_b / max(n_b, 1)) / se


def _group_refusals(run: _Run) -> list[dict[str, Any]]:
    con = run.store.con
    mapping = _values(run.restricts, ("listing", "service"))
    services = [
        s for s, spec in run.scenario.rulebook.services.items() if spec.kind == "restriction"
    ]
    result = con.execute(
        _by_group(
            f"""WITH refused AS (
              SELECT DISTINCT l.sid, v.service FROM lab.listing_rows l
              JOIN {mapping} v USING (listing) WHERE l.month >= 0
            ), cells AS (
              SELECT g.attribute, g.grp, count(*) AS n FROM $groups g GROUP BY ALL
            ), hits AS (
              SELECT g.attribute, g.grp, r.service, count(*) AS refused
              FROM $groups g JOIN refused r USING (sid) GROUP BY ALL
            )
            SELECT c.attribute, c.grp, s.service, c.n, coalesce(h.refused, 0)
            FROM cells c CROSS JOIN (SELECT unnest(?::VARCHAR[]) AS service) s
            LEFT JOIN hits h ON h.attribute = c.attribute AND h.grp = c.grp
              AND h.service = s.service"""
        ),
        [services],
    ).fetchall()
    rows = [
        {
            "rulebook": run.scenario.label,
            "attribute": attribute,
            "group": group,
            "service": service,
            "residents": int(n),
            "refused": int(refused),
            "refusal_rate": refused / n,
        }
        for attribute, group, service, n, refused in sorted(
            result, key=lambda r: (_group_key(r[0], r[1]), services.index(r[2]))
        )
    ]
    _ratios(rows, "refused", "refusal_rate", "refusal_ratio", "refusal_flagged", adverse=True)
    return rows


def _spells(run: _Run, start: dt.date, last: int) -> list[dict[str, Any]]:
    """How long residents stay listed: spells of consecutive month-ends on one listing.

    A spell runs from its earliest ``since`` to its end: the last ``until`` seen while it is
    still running at the last month, else the earlier of that ``until`` and the end of the
    month after it was last seen (a settlement ends a listing between two month-ends; the lab
    knows it to the month).
    """
    con = run.store.con
    ends = ", ".join(
        f"({m}, {sql_timestamp(behaviour.month_bounds(start, m + 1)[1])})" for m in range(last + 1)
    )
    result = con.execute(
        f"""WITH runs AS (
          SELECT *, month - row_number() OVER (PARTITION BY sid, listing ORDER BY month) AS island
          FROM (SELECT month, sid, listing, min(since) AS since, max(until) AS until
                FROM lab.listing_rows GROUP BY ALL)
        ), spells AS (
          SELECT listing, sid, min(month) AS first_month, max(month) AS last_month,
                 min(since) AS since, arg_max(until, month) AS last_until
          FROM runs GROUP BY listing, sid, island
        ), ends AS (SELECT * FROM (VALUES {ends}) AS e(month, next_end))
        SELECT s.listing, count(*) AS spells,
               count(*) FILTER (s.last_month = {last}) AS still_running,
               CAST(sum(d) AS DOUBLE) / count(*) / 86400 AS mean_days,
               quantile_cont(d, 0.5) / 86400 AS median_days,
               quantile_cont(d, 0.9) / 86400 AS p90_days
        FROM (
          SELECT s.*, date_diff('second', s.since,
                   CASE WHEN s.last_month = {last} THEN s.last_until
                        ELSE least(s.last_until, e.next_end) END) AS d
          FROM spells s JOIN ends e ON e.month = s.last_month
          WHERE s.first_month >= 0
        ) s GROUP BY s.listing ORDER BY s.listing"""
    ).fetchall()
    out = []
    for listing, n, running, mean, median, p90 in result:
        out.append(
            {
                "rulebook": run.scenario.label,
                "listing": listing,
                "spells": int(n),
                "still_running": int(running),
                "mean_days": float(mean),
                "median_days": float(median),
                "p90_days": float(p90),
            }
        )
    return out


def _appeals(run: _Run, params: Parameters, start: dt.date, years: int) -> list[dict[str, Any]]:
    """The appeal queue month by month as a fluid first-come-first-served queue.

    Appeals arrive evenly through the month (``appeal_share`` of the month's new or extended
    listings) and reviewers work evenly at their capacity. An appeal arriving at day t waits
    Q(t)/c days, Q(t) = max(0, B + (a - c) t) being the appeals ahead of it (B the backlog at
    the start of the month, a and c the arrival and review rates per day); it misses the review
    deadline when that wait exceeds the rulebook's ``appeal.review_days``.
    """
    rb = run.scenario.rulebook
    deadline = rb.appeal.review_days
    con = run.store.con
    new = dict(
        con.execute(
            """SELECT month, count(*) FROM lab.listing_rows b WHERE month >= 0 AND NOT EXISTS (
              SELECT 1 FROM lab.listing_rows p WHERE p.month = b.month - 1 AND p.sid = b.sid
                AND p.listing = b.listing AND p.record_id IS NOT DISTINCT FROM b.record_id)
            GROUP BY month"""
        ).fetchall()
    )
    residents = int(con.execute("SELECT count(*) FROM lab.residents").fetchall()[0][0])
    hours = params.review_hours_per_100k * residents / 100_000
    capacity = hours * 60 / params.minutes_per_appeal
    backlog = 0.0
    rows = []
    for month in range(12 * years):
        first, end = behaviour.month_bounds(start, month)
        days = (end - first).days + 1
        decisions = int(new.get(month, 0))
        arrived = decisions * params.appeal_share
        missed, wait = queue_month(backlog, arrived, capacity, days, deadline)
        decided = min(capacity, backlog + arrived)
        rows.append(
            {
                "rulebook": run.scenario.label,
                "month": month,
                "month_end": f"{end:%Y-%m}",
                "adverse_decisions": decisions,
                "appeals": arrived,
                "hours_needed": arrived * params.minutes_per_appeal / 60,
                "hours_available": hours,
                "decided": decided,
                "backlog_start": backlog,
                "backlog_end": backlog + arrived - decided,
                "missed_deadline_share": missed,
                "mean_wait_days": wait,
            }
        )
        backlog = backlog + arrived - decided
    return rows


def queue_month(
    backlog: float, arrivals: float, capacity: float, days: int, deadline: float
) -> tuple[float, float]:
    """Share of a month's appeals that wait longer than ``deadline`` days, and the mean wait.

    >>> queue_month(0, 10, 20, 30, 15)  # capacity to spare: nobody waits
    (0.0, 0.0)
    >>> queue_month(0, 60, 30, 30, 15)  # twice the capacity: the second half waits too long
    (0.5, 15.0)
    """
    if arrivals <= 0:
        return 0.0, 0.0
    a, c = arrivals / days, capacity / days
    if c <= 0:
        return 1.0, float("inf")
    # Q(t) = max(0, backlog + (a - c) t); t0 is where it reaches zero (if it does).
    steps = 2_000
    t = (np.arange(steps) + 0.5) * days / steps
    queue = np.maximum(0.0, backlog + (a - c) * t)
    wait = queue / c
    return float(np.mean(wait > deadline)), float(np.mean(wait))


def _final_state(run: _Run) -> pa.Table:
    """Each resident's score, band and blacklists at the last month-end."""
    return run.store.con.sql(
        """SELECT f.sid, f.score, f.band,
                  list_sort(list(l.listing) FILTER (l.listing IS NOT NULL)) AS listings
        FROM lab.final f LEFT JOIN (
          SELECT DISTINCT sid, listing FROM lab.listing_rows
          WHERE month = (SELECT max(month) FROM lab.listing_rows)
        ) l USING (sid)
        GROUP BY ALL ORDER BY f.sid"""
    ).to_arrow_table()
