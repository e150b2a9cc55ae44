"""The policy lab: deterministic for a seed, figures equal to tables, the offsetting safeguard
holding on the demo rulebook and failing on the naive one, and the naive rulebook refused for
every real use.

Cities here are small (a few thousand residents, one reported year, one warm-up year) so the
whole file runs in well under a minute.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from civiscore.cli import app
from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.lab import report
from civiscore.lab.behaviour import Parameters
from civiscore.lab.charts import Chart, drawn
from civiscore.lab.diff import structural
from civiscore.lab.simulate import Result, Role, Scenario, queue_month, simulate
from civiscore.lab.sweep import Sweep, SweepError
from civiscore.rulebook import registry
from civiscore.rulebook.load import (
    RulebookError,
    demo_rulebook_path,
    load,
    load_for_simulation,
    loads_for_simulation,
    naive_rulebook_path,
    parse_yaml,
)
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace

runner = CliRunner(env={"CIVISCORE_HOME": None, "COLUMNS": "200"})
START = dt.date(2026, 1, 1)
FAST = Parameters(warmup_years=1)


def scenario(path: Path, role: Role = "primary", label: str | None = None) -> Scenario:
    rb, warnings = load_for_simulation(path)
    text = path.read_text(encoding="utf-8")
    return Scenario.of(label or path.stem, rb, str(path), text, warnings, role)


DEMO = scenario(demo_rulebook_path())
NAIVE = scenario(naive_rulebook_path(), "compare")


@pytest.fixture(scope="module")
def compared() -> Result:
    """Demo against naive on one city. Listed residents volunteer much more (the score-repair
    feedback turned up) so that merits meet grave sanctions often enough to tell the two apart.
    """
    params = Parameters(warmup_years=1, listed_merit_multiplier=5.0, settle_listed=0.0)
    return simulate([DEMO, NAIVE], residents=6_000, years=1, seed=7, start=START, params=params)


# -- the offsetting safeguard -----------------------------------------------------------------


def _offsetting(result: Result, label: str) -> list[dict[str, Any]]:
    return report.rows_of(
        result.tables["offsetting"], rulebook=label, offence="(any active grave sanction)"
    )


def test_no_grave_sanction_reaches_band_a_under_the_demo_rulebook(compared: Result) -> None:
    rows = _offsetting(compared, "demo")
    assert len(rows) == 12
    assert sum(r["grave_sanction_active"] for r in rows) > 100  # the test has cases to check
    assert all(r["sanctioned_in_good_band"] == 0 for r in rows)


def test_the_naive_points_total_lets_merits_cancel_grave_sanctions(compared: Result) -> None:
    rows = _offsetting(compared, "naive")
    assert max(r["sanctioned_in_good_band"] for r in rows) > 0


def test_merits_cannot_lift_a_listed_debtor_above_the_cap_on_the_plan_itself() -> None:
    """The same question on the engine directly: a judgment debtor who volunteers every week."""
    store = DuckDBStore.memory()
    at = dt.datetime(2026, 6, 30, 23, 59, 59)
    rows = [("courts", "D1", 1, "court.judgment_default", dt.datetime(2026, 1, 5), 1e5, "R1")]
    rows += [
        (
            "civil_affairs",
            f"V{i}",
            1,
            "civic.volunteer_hours",
            dt.datetime(2026, 1, 6 + i),
            40.0,
            None,
        )
        for i in range(20)
    ]
    store.con.executemany(
        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, 0)",
        [(*r, r[4]) for r in rows],
    )
    bands = {}
    for s in (DEMO, NAIVE):
        cur = DuckDBEngine(store).evaluate(s.rulebook, at, at)
        bands[s.label] = cur.execute("SELECT band, grave_active FROM scores").fetchall()[0]
        cur.close()
    assert bands["demo"] == ("B", True)
    assert bands["naive"][1] is True and bands["naive"][0].startswith("A")


# -- determinism ------------------------------------------------------------------------------


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**31), residents=st.integers(100, 500))
def test_the_simulation_is_deterministic_for_a_seed(seed: int, residents: int) -> None:
    one = simulate([DEMO], residents=residents, years=1, seed=seed, start=START, params=FAST)
    two = simulate([DEMO], residents=residents, years=1, seed=seed, start=START, params=FAST)
    assert one.tables.keys() == two.tables.keys()
    for name in one.tables:
        assert one.tables[name].equals(two.tables[name]), name


def test_pruning_inert_records_changes_nothing() -> None:
    """Records past every clock are deleted each month; the tables must not notice."""
    # Two years of records: those of the first year pass every one-year clock during the second.
    params = Parameters(warmup_years=1)
    sweep = Sweep.parse("rules[transport.drunk_driving].valid_for=P6M,P1Y")
    data = parse_yaml(demo_rulebook_path().read_text(encoding="utf-8"))
    short = [
        Scenario.of(f"v{t}", rb, "d", text, w, "sweep", t)
        for t, rb, w, text in sweep.variants(data, "d", "production")
    ]
    runs = [
        simulate([DEMO, NAIVE, short[0]], residents=800, years=1, seed=11, start=START,
                 params=params, prune=prune)
        for prune in (True, False)
    ]  # fmt: skip
    for name in runs[0].tables:
        assert runs[0].tables[name].equals(runs[1].tables[name]), name


def test_another_seed_gives_another_city() -> None:
    one = simulate([DEMO], residents=500, years=1, seed=1, start=START, params=FAST)
    two = simulate([DEMO], residents=500, years=1, seed=2, start=START, params=FAST)
    assert not one.tables["scores"].equals(two.tables["scores"])


def test_compared_rulebooks_see_the_same_city(compared: Result) -> None:
    groups = compared.tables["groups"]
    demo = [
        (r["attribute"], r["group"], r["residents"])
        for r in report.rows_of(groups, rulebook="demo")
    ]
    naive = [
        (r["attribute"], r["group"], r["residents"])
        for r in report.rows_of(groups, rulebook="naive")
    ]
    assert demo == naive


# -- figures agree with tables ----------------------------------------------------------------


@pytest.fixture(scope="module")
def written(compared: Result, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    return report.write(compared, out)


def test_every_chart_draws_exactly_its_numbers(written: tuple[Path, Path, Any]) -> None:
    _, _, built = written
    assert len(built.charts) >= 15
    for chart in built.charts:
        figure = drawn(chart.figure())
        assert figure.keys() == chart.series.keys(), chart.title
        for label, values in chart.series.items():
            assert figure[label] == pytest.approx(values), (chart.title, label)
        assert chart.title and chart.xlabel and chart.ylabel


def test_band_chart_numbers_are_the_bands_table(written: tuple[Path, Path, Any]) -> None:
    _, tables, built = written
    bands = pq.read_table(tables / "bands.parquet").to_pylist()
    chart = next(c for c in built.charts if c.title.endswith("— naive") and c.source == "bands")
    for band, values in chart.series.items():
        expected = [
            100 * r["share"] for r in bands if r["rulebook"] == "naive" and r["band"] == band
        ]
        assert values == pytest.approx(expected)


def test_offsetting_chart_numbers_are_the_offsetting_table(
    written: tuple[Path, Path, Any],
) -> None:
    _, tables, built = written
    off = pq.read_table(tables / "offsetting.parquet").to_pylist()
    chart = next(c for c in built.charts if c.source == "offsetting" and c.kind == "line")
    for label, values in chart.series.items():
        expected = [
            r["sanctioned_in_good_band"]
            for r in off
            if r["rulebook"] == label and r["offence"] == "(any active grave sanction)"
        ]
        assert values == expected


def test_appeals_chart_numbers_are_the_appeals_table(written: tuple[Path, Path, Any]) -> None:
    _, tables, built = written
    appeals = pq.read_table(tables / "appeals.parquet").to_pylist()
    chart = next(c for c in built.charts if c.source == "appeals" and "backlog" in c.title)
    for label, values in chart.series.items():
        assert values == [r["backlog_end"] for r in appeals if r["rulebook"] == label]


def test_csv_and_parquet_hold_the_same_rows(written: tuple[Path, Path, Any]) -> None:
    import pyarrow.csv as pa_csv

    _, tables, _ = written
    for parquet in tables.glob("*.parquet"):
        csv = pa_csv.read_csv(parquet.with_suffix(".csv"))
        assert csv.num_rows == pq.read_table(parquet).num_rows, parquet.name


def test_report_is_self_contained_with_six_sections(written: tuple[Path, Path, Any]) -> None:
    html, _, built = written
    text = html.read_text(encoding="utf-8")
    assert [s.number for s in built.sections] == [1, 2, 3, 4, 5, 6]
    for n in range(1, 7):
        assert f'id="s{n}"' in text
    # Nothing is fetched from anywhere: no external scripts, styles or images.
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert text.count("data:image/png;base64,") == len(built.charts)
    # The naive rulebook's safeguard breaches are printed, with its hash and the seed.
    assert "breaks 17 safeguard(s)" in text
    assert NAIVE.sha256 in text and re.search(r"seed\s+7\.", text)


def test_a_table_cell_is_the_number_in_the_table_file(written: tuple[Path, Path, Any]) -> None:
    html, tables, _ = written
    bands = pq.read_table(tables / "bands.parquet").to_pylist()
    last = max(r["month"] for r in bands)
    row = next(
        r for r in bands if r["rulebook"] == "demo" and r["month"] == last and r["band"] == "A"
    )
    assert f"{row['residents']:,}</td><td>{100 * row['share']:.2f} %" in html.read_text()


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    kind=st.sampled_from(("line", "bar")),
    n=st.integers(1, 20),
    k=st.integers(1, 5),
)
def test_any_chart_draws_its_series(
    data: st.DataObject, kind: Literal["line", "bar"], n: int, k: int
) -> None:
    values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    series = {f"s{i}": data.draw(st.lists(values, min_size=n, max_size=n)) for i in range(k)}
    chart = Chart("t", "x (unit)", "y (unit)", [str(i) for i in range(n)], series, kind=kind)
    assert drawn(chart.figure()) == series


# -- appeals queue ----------------------------------------------------------------------------


@given(
    backlog=st.floats(0, 1e4),
    arrivals=st.floats(0, 1e4),
    capacity=st.floats(0.1, 1e4),
)
def test_queue_share_missed_is_a_share_and_grows_with_the_backlog(
    backlog: float, arrivals: float, capacity: float
) -> None:
    missed, wait = queue_month(backlog, arrivals, capacity, 30, 15)
    assert 0.0 <= missed <= 1.0 and wait >= 0.0
    more, _ = queue_month(backlog + 100, arrivals, capacity, 30, 15)
    assert more >= missed


def test_appeals_beyond_capacity_pile_up_and_miss_the_deadline() -> None:
    params = Parameters(warmup_years=1, review_hours_per_100k=1.0)
    result = simulate([DEMO], residents=2_000, years=1, seed=3, start=START, params=params)
    rows = result.tables["appeals"].to_pylist()
    assert rows[-1]["backlog_end"] > rows[0]["backlog_end"] > 0
    assert rows[-1]["missed_deadline_share"] == 1.0


# -- simulation only: never for real ----------------------------------------------------------


def test_naive_rulebook_loads_for_simulation_with_its_breaches_as_warnings() -> None:
    rb, warnings = load_for_simulation(naive_rulebook_path())
    assert rb.simulation_only
    paths = {w.path for w in warnings}
    assert "grave_sanction_band_cap" in paths
    assert any(p.endswith(".cap") for p in paths) and any(p.endswith(".valid_for") for p in paths)


def test_naive_rulebook_is_refused_by_lint_publish_and_scoring(tmp_path: Path) -> None:
    with pytest.raises(RulebookError) as caught:
        load(naive_rulebook_path())
    assert caught.value.problems[0].path == "simulation_only"
    result = runner.invoke(app, ["lint", str(naive_rulebook_path())])
    assert result.exit_code == 2 and "simulation_only" in result.stderr
    result = runner.invoke(
        app, ["--home", str(tmp_path / "h"), "init", "--rulebook", str(naive_rulebook_path())]
    )
    assert result.exit_code == 2 and "simulation_only" in result.stderr
    assert not (tmp_path / "h").exists()
    ws, _ = Workspace.init(tmp_path / "home")
    try:
        with pytest.raises(RulebookError):
            registry.publish(ws.store, naive_rulebook_path(), now_local())
        with pytest.raises(RulebookError, match="simulation_only"):
            ws.engine.score(NAIVE.rulebook, now_local(), now_local())
        with pytest.raises(RulebookError, match="simulation_only"):
            ws.engine.update(NAIVE.rulebook, None, now_local(), now_local())
    finally:
        ws.close()


def test_a_rulebook_breaking_safeguards_must_say_it_is_simulation_only() -> None:
    text = naive_rulebook_path().read_text(encoding="utf-8").replace("simulation_only: true\n", "")
    with pytest.raises(RulebookError) as caught:
        loads_for_simulation(text, "unmarked.yaml")
    assert all("add simulation_only: true" in p.message for p in caught.value.problems)


def test_protected_categories_are_refused_even_for_simulation() -> None:
    text = (
        naive_rulebook_path()
        .read_text(encoding="utf-8")
        .replace("tourism.uncivil_conduct", "civic.religious_attendance")
    )
    with pytest.raises(RulebookError) as caught:
        loads_for_simulation(text, "protected.yaml")
    assert any("protected category (religion)" in p.message for p in caught.value.problems)


# -- sweeps and diff --------------------------------------------------------------------------


def test_sweep_sets_the_field_and_validates_each_value() -> None:
    data = parse_yaml(demo_rulebook_path().read_text(encoding="utf-8"))
    spec = Sweep.parse("listings[dishonest_judgment_debtor].duration=P6M,P1Y")
    variants = spec.variants(data, "demo.yaml", "production")
    assert [str(v[1].listing("dishonest_judgment_debtor").duration) for v in variants] == [
        "P6M",
        "P1Y",
    ]
    with pytest.raises(RulebookError, match="cap"):
        Sweep.parse("rules[civic.heroic_act].cap=null,null").variants(data, "d", "production")
    with pytest.raises(SweepError, match=re.escape("known: transport.speeding.under_20")):
        Sweep.parse("rules[nope].points=1,2").apply(data, 1)


def test_diff_lists_field_changes_by_id() -> None:
    changes = {(c.kind, c.path) for c in structural(DEMO.rulebook, NAIVE.rulebook)}
    assert ("changed", "grave_sanction_band_cap") in changes
    assert ("changed", "rules[civic.heroic_act].cap") in changes
    assert ("changed", "rules[transport.drunk_driving].valid_for") in changes
    assert ("changed", "simulation_only") in changes
    valid_for = next(
        c
        for c in structural(DEMO.rulebook, NAIVE.rulebook)
        if c.path.endswith("[transport.drunk_driving].valid_for")
    )
    assert (valid_for.old, valid_for.new) == ("P3Y", None)


def test_rulebook_diff_command_estimates_the_effect(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["rulebook", "diff", "demo", "naive", "--residents", "1500", "--years", "1", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    import json

    data = json.loads(result.stdout)
    assert data["new"]["safeguard_warnings"] == 17
    human = runner.invoke(app, ["rulebook", "diff", "demo", "naive", "--residents", "0"])
    assert "rules[civic.heroic_act].cap" in human.stdout
    assert data["effect"]["residents"] == 1500 and data["effect"]["band_moves"]


def test_simulate_command_writes_report_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = runner.invoke(
        app,
        [
            "simulate", "--rulebook", "demo", "--residents", "800", "--years", "1",
            "--param", "warmup_years=0", "--sweep", "rules[transport.fare_evasion].points=-5,-20",
            "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert out.exists() and (tmp_path / "r-tables" / "sweep.parquet").exists()
    sweep = pq.read_table(tmp_path / "r-tables" / "sweep.parquet")
    assert sweep.column("value").to_pylist() == ["-5", "-20"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "nope=1"], "NAME one of: warmup_years"),
        (["--param", "appeal_share=2"], "appeal_share"),
        (["--sweep", "rules[x].points=1"], "at least two values"),
        (["--rulebook", "missing.yaml"], "no such file"),
        (["--start", "2026-13"], "is not a month"),
    ],
)
def test_simulate_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    base = [
        "simulate",
        "--rulebook",
        "demo",
        "--residents",
        "10",
        "--out",
        str(tmp_path / "r.html"),
    ]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_hidden_attributes_live_outside_the_record_store() -> None:
    """The store's own database has no attribute column; only the attached ``lab`` one does."""
    from civiscore.lab import behaviour
    from civiscore.lab.simulate import _open

    run = _open(DEMO, behaviour.population(50, 1), None)
    try:
        columns = run.store.con.execute(
            "SELECT database_name, table_name, column_name FROM duckdb_columns()"
        ).fetchall()
    finally:
        run.store.close()
    hidden = {"district", "age_band", "income_decile", "hukou"}
    assert {(d, t) for d, t, c in columns if c in hidden} == {("lab", "residents")}


def test_month_records_carry_no_hidden_attribute() -> None:
    """The plan's records never carry the lab's attributes."""
    from civiscore.lab import behaviour

    pop = behaviour.population(100, 1)
    import numpy as np

    records = behaviour.month_records(
        pop, FAST, 1, 0, START, np.zeros(100, dtype=bool), behaviour.OpenJudgments()
    )
    assert set(records.column_names) & {"district", "age_band", "income_decile", "hukou"} == set()
    assert isinstance(records, pa.Table)
