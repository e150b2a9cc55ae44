"""The policy-lab report: one self-contained HTML file, and its tables as Parquet and CSV.

Sections 1-6 answer the questions of ``docs/policy-lab.md``, each with charts
(:mod:`civiscore.lab.charts`) and a table printed from the same numbers. Every chart's numbers
come from one of the tables written beside the report, so a reader can redo any figure.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from civiscore.lab import behaviour
from civiscore.lab.charts import BAND_COLOURS, Chart
from civiscore.lab.simulate import FOUR_FIFTHS, Result, Scenario, good_bands

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("civiscore.lab", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass
class Table:
    """A table as printed in the report: a caption, column headers and formatted rows."""

    caption: str
    columns: list[str]
    rows: list[list[str]]
    source: str = ""
    flagged: list[bool] = field(default_factory=list)


@dataclass
class Section:
    number: int
    title: str
    question: str
    notes: list[str]
    charts: list[Chart]
    tables: list[Table]


@dataclass
class Report:
    """Everything the template prints."""

    title: str
    generated: str
    meta: dict[str, Any]
    scenarios: list[Scenario]
    sections: list[Section]
    assumptions: list[tuple[str, str]]
    parameters: list[tuple[str, str, str]]
    sweep: dict[str, Any] | None
    tables_dir: str
    charts: list[Chart] = field(default_factory=list)


def rows_of(table: pa.Table | None, **where: Any) -> list[dict[str, Any]]:
    """The table's rows as dicts, keeping those whose columns equal ``where``."""
    if table is None:
        return []
    return [r for r in table.to_pylist() if all(r.get(k) == v for k, v in where.items())]


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _num(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def _int(x: float) -> str:
    return f"{round(x):,}"


def _main(result: Result) -> list[Scenario]:
    return [s for s in result.scenarios if s.role != "sweep"]


# -- 1. scores and bands ----------------------------------------------------------------------


def section_bands(result: Result) -> Section:
    charts: list[Chart] = []
    bands_t = result.tables["bands"]
    main = _main(result)
    for s in main:
        rows = rows_of(bands_t, rulebook=s.label)
        x = sorted({r["month_end"] for r in rows})
        shares = {
            b: [100 * r["share"] for r in rows if r["band"] == b] for b in s.rulebook.band_order()
        }
        charts.append(
            Chart(
                f"Residents per band, month by month — {s.label}",
                "month (end of month)",
                "share of residents (%, log scale)",
                x,
                shares,
                source="bands",
                log_y=True,
                colours=BAND_COLOURS,
            )
        )
    scores = result.tables["scores"]
    x = sorted({r["month_end"] for r in rows_of(scores)})
    series: dict[str, list[float]] = {}
    for s in main:
        rows = rows_of(scores, rulebook=s.label)
        for q, name in (("p05", "5th percentile"), ("p50", "median"), ("p95", "95th percentile")):
            series[f"{s.label}: {name}"] = [r[q] for r in rows]
    charts.append(
        Chart(
            "Score distribution month by month: median and 5th–95th percentiles",
            "month (end of month)",
            "score (points)",
            x,
            series,
            source="scores",
        )
    )
    hist = result.tables["score_histogram"]
    bins = sorted({r["score_from"] for r in rows_of(hist)})
    counts: dict[str, list[float]] = {}
    for s in main:
        found = {r["score_from"]: r["residents"] for r in rows_of(hist, rulebook=s.label)}
        counts[s.label] = [float(found.get(b, 0)) for b in bins]
    charts.append(
        Chart(
            "Scores at the last month-end, in 10-point bins",
            "score (points, lower edge of the bin)",
            "residents (log scale)",
            [f"{b:g}" for b in bins],
            counts,
            source="score_histogram",
            log_y=True,
        )
    )
    table_rows = []
    for s in main:
        rows = rows_of(bands_t, rulebook=s.label)
        first, last = min(r["month"] for r in rows), max(r["month"] for r in rows)
        for b in s.rulebook.band_order():
            a = next(r for r in rows if r["month"] == first and r["band"] == b)
            z = next(r for r in rows if r["month"] == last and r["band"] == b)
            table_rows.append(
                [
                    s.label,
                    b,
                    _int(a["residents"]),
                    _pct(a["share"]),
                    _int(z["residents"]),
                    _pct(z["share"]),
                    f"{100 * (z['share'] - a['share']):+.2f} pt",
                ]
            )
    mean_rows = [
        [
            s.label,
            *(
                _num(r[k])
                for r in [rows_of(scores, rulebook=s.label)[-1]]
                for k in ("mean", "p01", "p05", "p25", "p50", "p75", "p95", "p99")
            ),
        ]
        for s in main
    ]
    first_month, last_month = x[0], x[-1]
    return Section(
        1,
        "Scores and bands",
        "How are scores and bands distributed, and how does that move month by month?",
        [
            "Every resident of the synthetic city is counted, including those with no record "
            "at all (they have the rulebook's base score).",
        ],
        charts,
        [
            Table(
                f"Residents per band in the first ({first_month}) and last ({last_month}) month",
                [
                    "rulebook",
                    "band",
                    "first: residents",
                    "first: share",
                    "last: residents",
                    "last: share",
                    "change",
                ],
                table_rows,
                "bands",
            ),
            Table(
                f"Score distribution at the last month-end ({last_month}), points",
                ["rulebook", "mean", "1 %", "5 %", "25 %", "median", "75 %", "95 %", "99 %"],
                mean_rows,
                "scores",
            ),
        ],
    )


# -- 2. listings and refusals -----------------------------------------------------------------


def section_listings(result: Result) -> Section:
    charts: list[Chart] = []
    listings = result.tables["listings"]
    refusals = result.tables["refusals"]
    main = _main(result)
    for s in main:
        rows = rows_of(listings, rulebook=s.label, list="blacklist")
        x = sorted({r["month_end"] for r in rows})
        ids = [lst.id for lst in s.rulebook.listings if lst.list == "blacklist"]
        charts.append(
            Chart(
                f"Residents on each blacklist at each month-end — {s.label}",
                "month (end of month)",
                "residents listed",
                x,
                {i: [float(r["residents"]) for r in rows if r["listing"] == i] for i in ids},
                source="listings",
            )
        )
        rows = rows_of(refusals, rulebook=s.label)
        services = list(dict.fromkeys(r["service"] for r in rows))
        charts.append(
            Chart(
                f"Residents who would be refused each service, month by month — {s.label}",
                "month (end of month)",
                "residents refused",
                x,
                {v: [float(r["refused"]) for r in rows if r["service"] == v] for v in services},
                source="refusals",
            )
        )
    spells = result.tables.get("listing_spells")
    table_rows = []
    for s in main:
        for lst in s.rulebook.listings:
            rows = rows_of(listings, rulebook=s.label, listing=lst.id)
            if not rows:
                continue
            sp = rows_of(spells, rulebook=s.label, listing=lst.id)
            spell = sp[0] if sp else None
            table_rows.append(
                [
                    s.label,
                    lst.id,
                    lst.list,
                    _num(sum(r["residents"] for r in rows) / len(rows)),
                    _int(rows[-1]["residents"]),
                    _num(sum(r["new_decisions"] for r in rows) / len(rows))
                    if lst.list == "blacklist"
                    else "—",
                    _int(spell["spells"]) if spell else "—",
                    _num(spell["median_days"], 0) if spell else "—",
                    _num(spell["p90_days"], 0) if spell else "—",
                    _int(spell["still_running"]) if spell else "—",
                    str(lst.duration or "—"),
                ]
            )
    refusal_rows = []
    for s in main:
        rows = rows_of(refusals, rulebook=s.label)
        for v in dict.fromkeys(r["service"] for r in rows):
            mine = [r["refused"] for r in rows if r["service"] == v]
            refusal_rows.append(
                [s.label, v, _num(sum(mine) / len(mine)), _int(max(mine)), _int(mine[-1])]
            )
    return Section(
        2,
        "Listings and refusals",
        "How many are listed, for what, for how long, and how many are refused each service "
        "each month?",
        [
            "A resident is refused a service while a blacklist restricting it is active; the "
            "count is of residents who would be refused if they asked, not of requests.",
            "New decisions are listing rows present at a month-end but not at the previous one "
            "(a new listing, or a conduct listing extended by a new record).",
            "Spells are runs of month-ends on one listing; their length runs from the listing's "
            "since to its end (a settlement ends one between two month-ends: known to the "
            "month). Spells still running at the end are counted to their planned end.",
        ],
        charts,
        [
            Table(
                "Listings: residents listed, new decisions and time listed",
                [
                    "rulebook",
                    "listing",
                    "list",
                    "mean listed",
                    "listed at the end",
                    "new decisions / month",
                    "spells begun",
                    "median days",
                    "90th pct days",
                    "still running",
                    "maximum duration",
                ],
                table_rows,
                "listings, listing_spells",
            ),
            Table(
                "Residents who would be refused each service",
                ["rulebook", "service", "mean per month-end", "highest", "at the end"],
                refusal_rows,
                "refusals",
            ),
        ],
    )


# -- 3. who is affected -----------------------------------------------------------------------


def section_groups(result: Result) -> Section:
    groups = result.tables["groups"]
    main = _main(result)
    charts = []
    for attribute in ("district", "age_band", "income_decile", "hukou"):
        label = attribute.replace("_", " ")
        first = rows_of(groups, rulebook=main[0].label, attribute=attribute)
        x = [r["group"] for r in first]
        series: dict[str, list[float]] = {
            "population share": [100 * r["population_share"] for r in first]
        }
        for s in main:
            rows = rows_of(groups, rulebook=s.label, attribute=attribute)
            series[f"{s.label}: share of listed"] = [100 * r["share_of_listed"] for r in rows]
        charts.append(
            Chart(
                f"Share of the population and of the listed residents, by {label}",
                attribute.replace("_", " "),
                "share (%)",
                x,
                series,
                kind="bar",
                source="groups",
            )
        )
        rates = {
            s.label: [
                100 * r["listing_rate"]
                for r in rows_of(groups, rulebook=s.label, attribute=attribute)
            ]
            for s in main
        }
        charts.append(
            Chart(
                f"Residents ever blacklisted during the run, by {attribute.replace('_', ' ')}",
                attribute.replace("_", " "),
                "ever listed (% of the group)",
                x,
                rates,
                kind="bar",
                source="groups",
            )
        )
    table_rows: list[list[str]] = []
    flagged: list[bool] = []
    for s in main:
        for r in rows_of(groups, rulebook=s.label):
            table_rows.append(
                [
                    s.label,
                    r["attribute"],
                    r["group"],
                    _int(r["residents"]),
                    _pct(r["population_share"]),
                    _int(r["listed"]),
                    _pct(r["listing_rate"]),
                    _pct(r["share_of_listed"]),
                    f"{r['listing_ratio']:.2f}",
                    "ADVERSE IMPACT" if r["listing_flagged"] else "",
                    _pct(r["benefit_rate"]),
                    f"{r['benefit_ratio']:.2f}",
                    "ADVERSE IMPACT" if r["benefit_flagged"] else "",
                ]
            )
            flagged.append(bool(r["listing_flagged"] or r["benefit_flagged"]))
    refusals = result.tables["group_refusals"]
    refusal_rows = []
    refusal_flags = []
    for s in main:
        for r in rows_of(refusals, rulebook=s.label):
            if r["refusal_flagged"]:
                refusal_rows.append(
                    [
                        s.label,
                        r["attribute"],
                        r["group"],
                        r["service"],
                        _int(r["refused"]),
                        _pct(r["refusal_rate"]),
                        f"{r['refusal_ratio']:.2f}",
                    ]
                )
                refusal_flags.append(True)
    if not refusal_rows:
        refusal_rows = [["—", "no group is flagged for any service", "", "", "", "", ""]]
        refusal_flags = [False]
    return Section(
        3,
        "Who is affected",
        "Listing and refusal rates per group against the population share, with the disparity "
        "ratio (four-fifths rule) flagged.",
        [
            "The groups are attributes the rules never see; they live in the lab's own tables.",
            f"Disparity ratio, adverse outcomes (listing, refusal): the least-affected group's "
            f"rate divided by this group's. Favourable outcome (ever granted a benefit): this "
            f"group's rate divided by the best group's. Below {FOUR_FIFTHS} is adverse impact "
            "under the four-fifths rule; it is flagged only when the gap to that reference "
            "group is also statistically significant (two-proportion z-test, |z| ≥ 1.96).",
            "Rates are of residents ever listed (or refused, or granted) at any month-end of "
            "the reported years.",
        ],
        charts,
        [
            Table(
                "Listing and benefit rates per group, with the four-fifths test",
                [
                    "rulebook",
                    "attribute",
                    "group",
                    "residents",
                    "population share",
                    "ever listed",
                    "listing rate",
                    "share of listed",
                    "listing ratio",
                    "listing flag",
                    "benefit rate",
                    "benefit ratio",
                    "benefit flag",
                ],
                table_rows,
                "groups",
                flagged,
            ),
            Table(
                "Refusals per service: groups flagged by the four-fifths test (all groups are "
                "in group_refusals.csv)",
                [
                    "rulebook",
                    "attribute",
                    "group",
                    "service",
                    "ever refused",
                    "refusal rate",
                    "refusal ratio",
                ],
                refusal_rows,
                "group_refusals",
                refusal_flags,
            ),
        ],
    )


# -- 4. offsetting ----------------------------------------------------------------------------


def section_offsetting(result: Result) -> Section:
    off = result.tables["offsetting"]
    main = _main(result)
    last = max(r["month"] for r in rows_of(off))
    offences = list(dict.fromkeys(r["offence"] for r in rows_of(off)))
    series: dict[str, list[float]] = {}
    for s in main:
        rows = {r["offence"]: r for r in rows_of(off, rulebook=s.label, month=last)}
        series[s.label] = [
            100 * rows[o]["in_good_band"] / rows[o]["offenders"] if rows[o]["offenders"] else 0.0
            for o in offences
        ]
    charts = [
        Chart(
            "Recent grave offenders in band A or better at the last month-end",
            "grave offence (recent: within the rule's window)",
            "offenders in band A or better (%)",
            offences,
            series,
            kind="bar",
            source="offsetting",
        )
    ]
    x = sorted({r["month_end"] for r in rows_of(off)})
    charts.append(
        Chart(
            "Residents with an active grave sanction yet in band A or better, month by month",
            "month (end of month)",
            "residents",
            x,
            {
                s.label: [
                    float(r["sanctioned_in_good_band"])
                    for r in rows_of(off, rulebook=s.label, offence="(any active grave sanction)")
                ]
                for s in main
            },
            source="offsetting",
        )
    )
    rows_out = []
    flags = []
    for o in offences:
        for s in main:
            r = rows_of(off, rulebook=s.label, month=last, offence=o)[0]
            over_time = rows_of(off, rulebook=s.label, offence=o)
            worst = max(x["sanctioned_in_good_band"] for x in over_time)
            rows_out.append(
                [
                    o,
                    s.label,
                    ", ".join(good_bands(s.rulebook)),
                    _int(r["offenders"]),
                    _int(r["in_good_band"]),
                    _pct(r["in_good_band"] / r["offenders"]) if r["offenders"] else "—",
                    _int(r["grave_sanction_active"]),
                    _int(r["sanctioned_in_good_band"]),
                    _int(worst),
                ]
            )
            flags.append(worst > 0)
    windows = result.meta.get("grave_offences", {})
    return Section(
        4,
        "Can merits cancel grave offences?",
        "Per grave offence, how many residents end up in a good band anyway under each rulebook?",
        [
            "A grave offence is a record of a kind that the first rulebook scores with a rule of "
            "severity grave; it is recent while it occurred within that rule's window ("
            + ", ".join(f"{k}: {v}" for k, v in windows.items())
            + ").",
            "A grave sanction is a listing marked grave that is active at the month-end: while "
            "one runs, a lawful rulebook caps the band below every A grade "
            "(grave_sanction_band_cap), whatever the merits.",
            "An offender with no active grave sanction (a drunk driver: no listing; a judgment "
            "debtor who settled) is not capped by any rulebook: a good band then shows merits "
            "or an old offence outweighing it in points, as the rulebook allows.",
        ],
        charts,
        [
            Table(
                f"Grave offenders and their bands at the last month-end ({x[-1]}); the last "
                "column is the highest count at any month-end",
                [
                    "grave offence",
                    "rulebook",
                    "good bands",
                    "recent offenders",
                    "in a good band",
                    "share",
                    "with an active grave sanction",
                    "sanctioned yet in a good band",
                    "most at any month-end",
                ],
                rows_out,
                "offsetting",
                flags,
            )
        ],
    )


# -- 5. appeals -------------------------------------------------------------------------------


def section_appeals(result: Result) -> Section:
    appeals = result.tables["appeals"]
    main = _main(result)
    x = sorted({r["month_end"] for r in rows_of(appeals)})
    load: dict[str, list[float]] = {}
    backlog: dict[str, list[float]] = {}
    missed: dict[str, list[float]] = {}
    for s in main:
        rows = rows_of(appeals, rulebook=s.label)
        load[f"{s.label}: reviewer hours needed"] = [r["hours_needed"] for r in rows]
        backlog[s.label] = [r["backlog_end"] for r in rows]
        missed[s.label] = [100 * r["missed_deadline_share"] for r in rows]
    first = rows_of(appeals, rulebook=main[0].label)
    load["reviewer hours available"] = [r["hours_available"] for r in first]
    params = result.meta["parameters"]
    charts = [
        Chart(
            "Reviewer hours needed for the month's appeals, and hours available",
            "month (end of month)",
            "reviewer hours per month",
            x,
            load,
            source="appeals",
        ),
        Chart(
            "Appeals waiting at each month-end (backlog)",
            "month (end of month)",
            "appeals waiting",
            x,
            backlog,
            source="appeals",
        ),
        Chart(
            "Share of the month's appeals not reviewed within the review deadline",
            "month (end of month)",
            "appeals past the deadline (%)",
            x,
            missed,
            source="appeals",
        ),
    ]
    rows_out = []
    for s in main:
        rows = rows_of(appeals, rulebook=s.label)
        by_year: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_year[r["month_end"][:4]].append(r)
        for year, rs in by_year.items():
            filed = sum(r["appeals"] for r in rs)
            missed_n = sum(r["appeals"] * r["missed_deadline_share"] for r in rs)
            rows_out.append(
                [
                    s.label,
                    year,
                    _int(sum(r["adverse_decisions"] for r in rs)),
                    _num(filed / len(rs)),
                    _num(sum(r["hours_needed"] for r in rs) / len(rs)),
                    _num(rs[0]["hours_available"]),
                    _num(rs[-1]["backlog_end"]),
                    _pct(missed_n / filed) if filed else "—",
                    _num(sum(r["mean_wait_days"] * r["appeals"] for r in rs) / filed)
                    if filed
                    else "—",
                ]
            )
    deadline = main[0].rulebook.appeal.review_days
    return Section(
        5,
        "Appeals",
        "Expected appeals per month, reviewer hours, and the share likely to miss the deadline.",
        [
            f"Appeals: {params['appeal_share']:.0%} of new or extended blacklist listings; "
            f"{params['minutes_per_appeal']:g} reviewer minutes each; "
            f"{params['review_hours_per_100k']:g} reviewer hours a month per 100,000 residents.",
            f"Deadline: the rulebook's review period ({deadline} days). The queue is worked "
            "first come, first served at an even pace, appeals arriving evenly through the "
            "month (a fluid queue: expected values, not one draw).",
        ],
        charts,
        [
            Table(
                "Appeals per year",
                [
                    "rulebook",
                    "year",
                    "adverse decisions",
                    "appeals / month",
                    "hours needed / month",
                    "hours available / month",
                    "backlog at year end",
                    "past the deadline",
                    "mean wait (days)",
                ],
                rows_out,
                "appeals",
            )
        ],
    )


# -- 6. sensitivity ---------------------------------------------------------------------------


def section_sweep(result: Result, sweep: dict[str, Any] | None) -> Section:
    notes = []
    charts: list[Chart] = []
    tables: list[Table] = []
    table = result.tables.get("sweep")
    if sweep is None or table is None:
        notes.append(
            "No sweep in this run. Add --sweep PATH=V1,V2,... to vary one rulebook field, for "
            "example --sweep 'rules[transport.speeding.over_50].points=-10,-20,-40' or "
            "--sweep 'listings[dishonest_judgment_debtor].duration=P6M,P1Y,P2Y,P3Y'."
        )
        return Section(6, "Sensitivity", "How do 1–3 move with one parameter?", notes, [], [])
    rows = table.to_pylist()
    x = [r["value"] for r in rows]
    path = sweep["path"]
    bands = [c.removeprefix("band_") for c in table.column_names if c.startswith("band_")]
    charts.append(
        Chart(
            f"Residents per band at the last month-end, by {path}",
            f"{path} (value swept)",
            "share of residents (%, log scale)",
            x,
            {b: [100 * r[f"band_{b}"] for r in rows] for b in bands},
            source="sweep",
            log_y=True,
            colours=BAND_COLOURS,
        )
    )
    charts.append(
        Chart(
            f"Mean score at the last month-end, by {path}",
            f"{path} (value swept)",
            "mean score (points)",
            x,
            {"mean score": [r["mean_score"] for r in rows]},
            source="sweep",
        )
    )
    listed = [c for c in table.column_names if c.startswith("listed_")]
    charts.append(
        Chart(
            f"Residents on each blacklist (mean over month-ends), by {path}",
            f"{path} (value swept)",
            "residents listed (mean)",
            x,
            {c.removeprefix("listed_"): [r[c] for r in rows] for c in listed},
            source="sweep",
        )
    )
    refused = [c for c in table.column_names if c.startswith("refused_")]
    charts.append(
        Chart(
            f"Residents refused each service (mean over month-ends), by {path}",
            f"{path} (value swept)",
            "residents refused (mean)",
            x,
            {c.removeprefix("refused_"): [r[c] for r in rows] for c in refused},
            source="sweep",
        )
    )
    ratios = [c for c in table.column_names if c.startswith("lowest_listing_ratio_")]
    charts.append(
        Chart(
            f"Lowest listing disparity ratio per attribute, by {path}",
            f"{path} (value swept)",
            "disparity ratio (1 = parity)",
            x,
            {c.removeprefix("lowest_listing_ratio_"): [r[c] for r in rows] for c in ratios},
            source="sweep",
            reference=(FOUR_FIFTHS, "four-fifths line"),
        )
    )
    columns = ["value", "mean score", *(f"band {b}" for b in bands)]
    columns += [f"listed: {c.removeprefix('listed_')}" for c in listed]
    columns += [f"refused: {c.removeprefix('refused_')}" for c in refused]
    columns += [f"lowest ratio: {c.removeprefix('lowest_listing_ratio_')}" for c in ratios]
    columns += ["groups flagged"]
    body = []
    for r in rows:
        body.append(
            [
                r["value"],
                _num(r["mean_score"]),
                *(_pct(r[f"band_{b}"]) for b in bands),
                *(_num(r[c]) for c in listed),
                *(_num(r[c]) for c in refused),
                *(f"{r[c]:.2f}" for c in ratios),
                _int(r["groups_flagged"]),
            ]
        )
    tables.append(Table(f"Sweep of {path}", columns, body, "sweep"))
    notes.append(
        f"Each value of {path} is a separate simulation of the same city with the same seed "
        "and behaviour model (common random numbers), so differences come from the rule and "
        "the feedback it causes, not from new random draws."
    )
    return Section(
        6,
        "Sensitivity",
        f"How do scores, listings and disparities move with {path}?",
        notes,
        charts,
        tables,
    )


def sweep_table(result: Result) -> pa.Table | None:
    """One row per swept value: the headline figures of sections 1-3."""
    swept = [s for s in result.scenarios if s.role == "sweep"]
    if not swept:
        return None
    bands_t, listings, refusals = (
        result.tables["bands"],
        result.tables["listings"],
        result.tables["refusals"],
    )
    groups, scores = result.tables["groups"], result.tables["scores"]
    out = []
    for s in swept:
        rows = rows_of(bands_t, rulebook=s.label)
        last = max(r["month"] for r in rows)
        row: dict[str, Any] = {"value": s.sweep_value, "rulebook": s.label}
        row["mean_score"] = rows_of(scores, rulebook=s.label, month=last)[0]["mean"]
        for b in s.rulebook.band_order():
            row[f"band_{b}"] = rows_of(bands_t, rulebook=s.label, month=last, band=b)[0]["share"]
        for lst in s.rulebook.listings:
            if lst.list == "blacklist":
                mine = [r["residents"] for r in rows_of(listings, rulebook=s.label, listing=lst.id)]
                row[f"listed_{lst.id}"] = sum(mine) / len(mine)
        for svc, spec in s.rulebook.services.items():
            if spec.kind == "restriction":
                mine = [r["refused"] for r in rows_of(refusals, rulebook=s.label, service=svc)]
                row[f"refused_{svc}"] = sum(mine) / len(mine)
        g = rows_of(groups, rulebook=s.label)
        for attribute in ("district", "age_band", "income_decile", "hukou"):
            row[f"lowest_listing_ratio_{attribute}"] = min(
                r["listing_ratio"] for r in g if r["attribute"] == attribute
            )
        row["groups_flagged"] = sum(1 for r in g if r["listing_flagged"] or r["benefit_flagged"])
        out.append(row)
    return pa.Table.from_pylist(out)


# -- the whole report -------------------------------------------------------------------------


def build(result: Result, sweep: dict[str, Any] | None, tables_dir: str) -> Report:
    """Assemble the report's sections (charts and tables) from a simulation result."""
    table = sweep_table(result)
    if table is not None:
        result.tables["sweep"] = table
    sections = [
        section_bands(result),
        section_listings(result),
        section_groups(result),
        section_offsetting(result),
        section_appeals(result),
        section_sweep(result, sweep),
    ]
    params = behaviour.Parameters(**result.meta["parameters"])
    parameters = [
        (name, f"{getattr(params, name)}", info.description or "")
        for name, info in behaviour.Parameters.model_fields.items()
    ]
    main = _main(result)
    title = " vs ".join(s.label for s in main)
    return Report(
        title=f"Policy lab: {title}",
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        meta=result.meta,
        scenarios=result.scenarios,
        sections=sections,
        assumptions=list(behaviour.ASSUMPTIONS),
        parameters=parameters,
        sweep=sweep,
        tables_dir=tables_dir,
        charts=[c for s in sections for c in s.charts],
    )


def render(report: Report) -> str:
    """The report as one HTML document: styles inline, figures as base64 PNG, no links out."""
    template = _ENV.get_template("report.html")
    return template.render(r=report, json=json, escape=html.escape)


def write(
    result: Result, out: Path, sweep: dict[str, Any] | None = None
) -> tuple[Path, Path, Report]:
    """Write ``out`` (the HTML) and ``<stem>-tables/`` (every table as Parquet and CSV)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tables_dir = out.parent / f"{out.stem}-tables"
    report = build(result, sweep, tables_dir.name)
    tables_dir.mkdir(exist_ok=True)
    for name, table in result.tables.items():
        pq.write_table(table, tables_dir / f"{name}.parquet")
        pa_csv.write_csv(table, tables_dir / f"{name}.csv")
    run = {
        "meta": result.meta,
        "sweep": sweep,
        "rulebooks": [
            {
                "label": s.label,
                "role": s.role,
                "rulebook": s.rulebook.rulebook,
                "version": s.rulebook.version,
                "source": s.source,
                "sha256": s.sha256,
                "simulation_only": s.rulebook.simulation_only,
                "safeguard_warnings": [f"{p.path}: {p.message}" for p in s.warnings],
            }
            for s in result.scenarios
        ],
    }
    (tables_dir / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    out.write_text(render(report), encoding="utf-8")
    return out, tables_dir, report
