"""The ``civiscore`` command line: a thin layer over :class:`civiscore.workspace.Workspace`.

Exit codes: 0 success (for ``check``: allowed), 1 ``check`` denied, 2 bad usage or invalid input.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import duckdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from civiscore.decisions.check import Decision, UnknownService
from civiscore.engine.spark_runtime import why_no_spark
from civiscore.home import KeyMissing, resolve_home
from civiscore.ids import InvalidSubjectId
from civiscore.ingest.readers import FileError
from civiscore.ingest.run import IngestSummary
from civiscore.rights.explain import Explanation
from civiscore.rulebook.load import RulebookError, load
from civiscore.rulebook.registry import NoRulebookInForce
from civiscore.store import timeline
from civiscore.store.base import Snapshot
from civiscore.store.duckdb_store import StoreMissing
from civiscore.timeutil import BadMoment, iso_local, now_local, parse_moment
from civiscore.workspace import Workspace

app = typer.Typer(
    help="civiscore: city-scale credit scoring under the rule of law.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

_STATE: dict[str, Path] = {}

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="civiscore home (default: $CIVISCORE_HOME or ./civiscore-data)"),
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at", help="the moment asked about, ISO 8601; a date means its end (default: now)"
    ),
]
KnownOpt = Annotated[
    str | None,
    typer.Option("--known-at", help="only what the store had received by then (default: now)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        envvar="CIVISCORE_MEMORY_LIMIT",
        help="memory the store may use for this command, e.g. 4GB; beyond it DuckDB spills to "
        "disk (default: DuckDB's own, 80 % of the machine's memory)",
    ),
]
# DuckDB's limit, set on the store's connection by every command that opens it.
_MEMORY: dict[str, str] = {}


@app.callback()
def main(home: HomeOpt = None, memory_limit: MemoryOpt = None) -> None:
    """civiscore: department records → rulebook → scores, listings and explained decisions."""
    _STATE["home"] = resolve_home(home)
    _MEMORY.clear()
    if memory_limit:
        _MEMORY["limit"] = memory_limit


def _home() -> Path:
    return _STATE.get("home") or resolve_home(None)


def fail(message: str) -> NoReturn:
    # Escaped: a message quoting "civiscore[spark]" or a path with brackets is text, not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the domain's expected errors into exit code 2 with their message."""
    try:
        yield
    except RulebookError as exc:
        err.print(f"[bold red]error:[/] rulebook refused ({len(exc.problems)} problem(s)):")
        for p in exc.problems:
            err.print(f"  {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    except (
        StoreMissing,
        KeyMissing,
        InvalidSubjectId,
        FileError,
        BadMoment,
        UnknownService,
        NoRulebookInForce,
    ) as exc:
        fail(str(exc))


def _moments(at: str | None, known_at: str | None) -> tuple[dt.datetime, dt.datetime]:
    now = now_local()
    t = parse_moment(at) if at else now
    k = parse_moment(known_at) if known_at else now
    return t, k


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


@contextmanager
def _workspace(read_only: bool = False) -> Iterator[Workspace]:
    with _errors():
        ws = Workspace.open(_home(), read_only=read_only)
        try:
            _limit_memory(ws)
            yield ws
        finally:
            ws.close()


def _limit_memory(ws: Workspace) -> None:
    """Apply ``--memory-limit`` to the store's connection, or say why it cannot be."""
    limit = _MEMORY.get("limit")
    if limit is None:
        return
    try:
        ws.store.con.execute("SET memory_limit = '" + limit.replace("'", "''") + "'")
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        fail(
            f"--memory-limit {limit!r} is not a size DuckDB accepts ({first}); "
            "give one such as 4GB or 512MB"
        )


# -- commands --------------------------------------------------------------------------------


@app.command()
def init(
    rulebook: Annotated[
        Path | None, typer.Option(help="rulebook YAML to publish (default: the demo rulebook)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the store and the pseudonym key, and publish a rulebook."""
    with _errors():
        ws, res = Workspace.init(_home(), rulebook)
        ws.close()
    if json_out:
        _print_json(
            {
                "store": str(res.home / "store.duckdb"),
                "key_file": str(res.key_file),
                "key_created": res.key_created,
                "rulebook_version": res.rulebook_version,
                "rulebook_published": res.rulebook_published,
            }
        )
        return
    out.print(f"store      {res.home / 'store.duckdb'}")
    state = "created" if res.key_created else "kept (already present)"
    out.print(f"key        {res.key_file} — {state}; keep it secret and backed up")
    published = "published" if res.rulebook_published else "already published"
    out.print(f"rulebook   version {res.rulebook_version} — {published}")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the city's files")],
    residents: Annotated[int, typer.Option(min=1, help="number of residents")] = 20_000,
    organisations: Annotated[
        int | None, typer.Option(min=1, help="number of organisations (default residents/20)")
    ] = None,
    years: Annotated[int, typer.Option(min=1, max=30, help="years of records")] = 5,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same city")] = 0,
    bad_rows: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="share of deliberately bad rows")
    ] = 0.01,
    end: Annotated[
        str | None, typer.Option(help="last day of records (default 2026-10-31)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a deterministic synthetic city: residents, organisations, department files."""
    from civiscore.synth.city import DEFAULT_END, write_city

    end_day = DEFAULT_END
    if end:
        try:
            end_day = dt.date.fromisoformat(end)
        except ValueError:
            fail(f"--end {end!r} is not a date; write 2026-10-31")
    total = residents + (organisations if organisations is not None else max(10, residents // 20))
    with _progress(json_out) as progress:
        task = progress.add_task("synthesising city", total=total)
        files = write_city(
            out_dir,
            residents=residents,
            organisations=organisations,
            years=years,
            seed=seed,
            bad_rows=bad_rows,
            end=end_day,
            progress=lambda n: progress.advance(task, n),
        )
    summary = {
        "out": str(out_dir),
        "residents": str(files.residents),
        "organisations": str(files.organisations),
        "departments": {d: str(p) for d, p in files.departments.items()},
        "rows": files.rows,
        "bad_rows": files.bad_rows,
    }
    if json_out:
        _print_json(summary)
        return
    table = Table(title=f"synthetic city in {out_dir}")
    for col in ("department", "file", "rows", "bad rows"):
        table.add_column(col, justify="right" if "rows" in col else "left")
    for dep, path in files.departments.items():
        table.add_row(dep, str(path), f"{files.rows[dep]:,}", f"{files.bad_rows[dep]:,}")
    out.print(table)


@contextmanager
def _progress(quiet: bool, *, bytes_mode: bool = False) -> Iterator[Progress]:
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns.append(DownloadColumn() if bytes_mode else MofNCompleteColumn())
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=quiet, transient=False) as progress:
        yield progress


def _advance_bytes(progress: Progress, task: TaskID) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


@app.command()
def ingest(
    department: Annotated[str, typer.Option(help="department that sent the files")],
    files: Annotated[list[Path], typer.Argument(help="CSV, JSON Lines or Parquet files")],
    json_out: JsonOpt = False,
) -> None:
    """Validate and store department records; rejected rows go to a rejects file."""
    summaries: list[IngestSummary] = []
    with _workspace() as ws, _errors():
        for path in files:
            with _progress(json_out, bytes_mode=True) as progress:
                label = f"{department}: {path.name}"
                task = progress.add_task(label, total=None)

                # Storing a file once read and checked takes a while: say so on the bar.
                def phase(text: str, label: str = label, task: TaskID = task) -> None:
                    progress.update(task, description=f"{label} ({text})")

                summaries.append(
                    ws.ingest(
                        department,
                        path,
                        progress=_advance_bytes(progress, task),
                        on_phase=phase,
                    )
                )
    if json_out:
        _print_json([s.as_dict() for s in summaries])
        return
    _print_ingest(summaries)


def _print_ingest(summaries: list[IngestSummary]) -> None:
    table = Table(title="ingest")
    for col in ("file", "rows", "accepted", "duplicate", "rejected"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for s in summaries:
        table.add_row(
            s.file, f"{s.rows:,}", f"{s.accepted:,}", f"{s.duplicates:,}", f"{s.rejected:,}"
        )
    out.print(table)
    for s in summaries:
        if s.rejects_file:
            by_field = ", ".join(f"{f}: {n}" for f, n in s.reasons.most_common())
            out.print(f"rejected rows of {s.file} → {s.rejects_file} ({by_field})")
        if s.ignored_columns:
            out.print(f"ignored columns in {s.file}: {', '.join(s.ignored_columns)} (not stored)")


class Engine(enum.StrEnum):
    duckdb = "duckdb"
    spark = "spark"


@app.command()
def score(
    at: AtOpt = None,
    known_at: KnownOpt = None,
    json_out: JsonOpt = False,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="bring the latest snapshot forward, rescoring only the subjects with new "
            "records or a validity or listing end since it (same result as a full score); "
            "scores everyone, and says why, when there is no snapshot yet, the rulebook "
            "version changed, or --at/--known-at is earlier than the snapshot's",
        ),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="duckdb: in this process, on the store; spark: the same plan on PySpark over "
            "the store's records written as Parquet (needs the spark extra and Java 17+); "
            "the snapshot is the same, row for row",
        ),
    ] = Engine.duckdb,
    master: Annotated[
        str | None,
        typer.Option(
            "--master",
            help="with --engine spark: the Spark master URL (spark://host:7077, yarn, "
            "k8s://…, local[4]); default: local mode on every core",
        ),
    ] = None,
    parquet: Annotated[
        Path | None,
        typer.Option(
            "--parquet",
            help="with --engine spark: the directory the records are written to as Parquet "
            "for Spark (default: <home>/parquet); on a cluster, one every worker mounts at "
            "the same path",
        ),
    ] = None,
) -> None:
    """Materialise scores, bands and listings for the whole population as of T."""
    update = None
    if engine is Engine.spark:
        if incremental:
            fail("--incremental runs on the DuckDB engine; leave out --engine spark")
        problem = why_no_spark()
        if problem is not None:
            fail(f"the Spark engine cannot run here: {problem}")
    elif master is not None or parquet is not None:
        fail("--master and --parquet are for --engine spark")
    with _workspace() as ws, _errors():
        t, k = _moments(at, known_at)
        first_update = (
            incremental
            and timeline.covered(ws.store.con) is None
            and ws.store.latest_snapshot() is not None
        )
        if first_update and not json_out:
            # The first update of a store sorts every record by occurrence (about 50 s at 200
            # million records); say so rather than leave a long wait unexplained.
            err.print(
                "this store's first daily update also sorts its records by occurrence, once",
                highlight=False,
            )
        with err.status("scoring the population", spinner="dots") if not json_out else _null():
            if incremental:
                update = ws.score_incremental(t, k)
                snap = update.snapshot
            elif engine is Engine.spark:
                snap = ws.score_on_spark(t, k, master=master, parquet_dir=parquet)
            else:
                snap = ws.score(t, k)
    data = _snapshot_dict(snap)
    if update is not None:
        data["base_snapshot_id"] = update.base_snapshot_id
        data["rescored_subjects"] = update.affected_subjects
        data["full_score_reason"] = update.full_reason
        data["method"] = update.method
        data["records_reason"] = update.records_reason
        if update.full_reason is not None:
            err.print(
                f"scored the whole population: {update.full_reason}",
                highlight=False,
                soft_wrap=True,
            )
    if json_out:
        _print_json(data)
        return
    out.print(
        f"snapshot {snap.snapshot_id}: {snap.subjects:,} subjects scored as of {snap.at} "
        f"(known at {snap.known_at}) under rulebook {snap.rulebook_version}"
    )
    if update is not None and update.base_snapshot_id is not None:
        how = (
            "by tallies of the changed records"
            if update.method == "tallies"
            else f"from their records ({update.records_reason})"
        )
        out.print(
            f"brought forward from snapshot {update.base_snapshot_id}: "
            f"{update.affected_subjects:,} subjects rescored {how}, the others' rows carried over",
            highlight=False,
            soft_wrap=True,
        )


@contextmanager
def _null() -> Iterator[None]:
    yield


def _snapshot_dict(snap: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": snap.snapshot_id,
        "rulebook_version": snap.rulebook_version,
        "as_of": iso_local(snap.at),
        "known_at": iso_local(snap.known_at),
        "subjects": snap.subjects,
    }


@app.command("check")
def check_cmd(
    subject_id: Annotated[str, typer.Argument(help="resident ID or unified social credit code")],
    service: Annotated[str, typer.Argument(help="service, e.g. high_speed_rail")],
    at: AtOpt = None,
    known_at: KnownOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """May this subject use this service? Exit 0 allowed, 1 denied."""
    with _workspace(read_only=True) as ws, _errors():
        t, k = _moments(at, known_at)
        decision = ws.check(subject_id, service, t, k)
    if json_out:
        _print_json(decision.model_dump(mode="json"))
    else:
        _print_decision(decision)
    raise typer.Exit(0 if decision.allowed else 1)


def _print_decision(d: Decision) -> None:
    if d.allowed:
        out.print(Panel(f"[bold green]ALLOWED[/] — {d.service} as of {d.as_of}", expand=False))
        return
    out.print(Panel(f"[bold red]DENIED[/] — {d.service} as of {d.as_of}", expand=False))
    for r in d.reasons:
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("listing", f"{r.name} ({r.listing})")
        table.add_row("legal basis", r.legal_basis)
        if r.department:
            table.add_row("decided by", f"{r.department}, record {r.record_id}")
        if r.reference:
            table.add_row("reference", r.reference)
        table.add_row("since", str(r.since or "—"))
        table.add_row("until", str(r.until or "—"))
        table.add_row("remedy", r.remedy or "—")
        table.add_row("appeal", r.appeal)
        out.print(table)


@app.command("explain")
def explain_cmd(
    subject_id: Annotated[str, typer.Argument(help="resident ID or unified social credit code")],
    at: AtOpt = None,
    known_at: KnownOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every record behind a subject's score and listings, with the rule and law for each."""
    with _workspace(read_only=True) as ws, _errors():
        t, k = _moments(at, known_at)
        x = ws.explain(subject_id, t, k)
    if json_out:
        _print_json(x.model_dump(mode="json"))
        return
    _print_explanation(x)


def _print_explanation(x: Explanation) -> None:
    capped = " (capped: a grave sanction is active)" if x.band_capped_by_grave_sanction else ""
    out.print(
        Panel(
            f"score [bold]{x.score}[/] = base {x.base} {x.score - x.base:+} · band "
            f"[bold]{x.band}[/]{capped}\nas of {x.as_of} · known at {x.known_at} · rulebook "
            f"{x.rulebook_version}",
            expand=False,
        )
    )
    if x.contexts:
        out.print("by context: " + ", ".join(f"{c} {p:+}" for c, p in sorted(x.contexts.items())))
    table = Table(title="records that count")
    for col in ("occurred", "department", "record", "rule", "points", "counts until"):
        table.add_column(col, justify="right" if col == "points" else "left")
    for line in x.lines:
        table.add_row(
            f"{line.occurred_at:%Y-%m-%d}",
            line.department,
            line.record_id,
            line.rule + (f"\n[dim]{line.note}[/]" if line.note else ""),
            f"{line.points:+}",
            f"{line.counts_until:%Y-%m-%d}" if line.counts_until else "—",
        )
    out.print(table)
    laws = {line.rule: line.legal_basis for line in x.lines}
    if laws:
        out.print("[bold]legal basis of each rule[/]")
        for rule, basis in sorted(laws.items()):
            out.print(f"  {rule}: {basis}", highlight=False)
    if x.not_counted:
        nc = Table(title="records that do not count")
        for col in ("occurred", "department", "record", "kind", "why"):
            nc.add_column(col)
        for n in x.not_counted:
            nc.add_row(f"{n.occurred_at:%Y-%m-%d}", n.department, n.record_id, n.kind, n.reason)
        out.print(nc)
    for lst in x.listings:
        services = ", ".join(r.service for r in lst.restricts)
        out.print(
            Panel(
                f"[bold red]{lst.name}[/] ({lst.listing}) since {lst.since} until {lst.until}\n"
                f"restricts: {services}\nlegal basis: {lst.legal_basis}\n"
                f"decided by: {lst.department} record {lst.record_id}"
                + (f", reference {lst.reference}" if lst.reference else "")
                + f"\nremedy: {lst.remedy or '—'}",
                expand=False,
            )
        )
    if x.benefits:
        out.print("[bold green]benefits:[/] " + ", ".join(x.benefits))


@app.command()
def stats(at: AtOpt = None, json_out: JsonOpt = False) -> None:
    """Subjects per band and per listing, restrictions and benefits per service."""
    with _workspace() as ws, _errors():
        if at:
            t = parse_moment(at)
            snap = ws.store.latest_snapshot(t) or ws.score(t, now_local())
        else:
            latest = ws.store.latest_snapshot()
            if latest is None:
                fail("no snapshot yet; run `civiscore score` first")
            snap = latest
        data = ws.stats(snap)
    if json_out:
        _print_json(data)
        return
    _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    out.print(
        f"snapshot {data['snapshot_id']} · as of {data['as_of']} · rulebook "
        f"{data['rulebook_version']} · {data['subjects']:,} subjects · mean score "
        f"{data['mean_score']}"
    )
    total = max(data["subjects"], 1)
    bands = Table(title="subjects per band")
    bands.add_column("band")
    bands.add_column("subjects", justify="right")
    bands.add_column("share", justify="right")
    bands.add_column("")
    for band, n in data["bands"].items():
        bands.add_row(band, f"{n:,}", f"{n / total:.2%}", "█" * max(0, round(40 * n / total)))
    out.print(bands)
    lists = Table(title="listings")
    lists.add_column("listing")
    lists.add_column("subjects", justify="right")
    for name, n in data["listings"].items():
        lists.add_row(name, f"{n:,}")
    out.print(lists)
    svc = Table(title="services")
    svc.add_column("service")
    svc.add_column("restricted", justify="right")
    svc.add_column("granted", justify="right")
    for name, n in data["restricted_per_service"].items():
        svc.add_row(name, f"{n:,}", "")
    for name, n in data["benefits_per_service"].items():
        svc.add_row(name, "", f"{n:,}")
    out.print(svc)


@app.command()
def lint(
    rulebook: Annotated[Path, typer.Argument(help="rulebook YAML file")],
    json_out: JsonOpt = False,
) -> None:
    """Check a rulebook against the schema and the safeguards. Exit 0 clean, 2 with errors."""
    try:
        rb = load(rulebook)
    except RulebookError as exc:
        if json_out:
            _print_json(
                {
                    "ok": False,
                    "problems": [
                        {"file": p.file, "path": p.path, "message": p.message} for p in exc.problems
                    ],
                }
            )
        else:
            for p in exc.problems:
                err.print(str(p), highlight=False, soft_wrap=True)
            err.print(f"[bold red]{len(exc.problems)} problem(s)[/]")
        raise typer.Exit(2) from exc
    if json_out:
        _print_json({"ok": True, "rulebook": rb.rulebook, "version": rb.version})
    else:
        out.print(
            f"{rulebook}: rulebook {rb.rulebook} version {rb.version} is clean "
            f"({len(rb.rules)} rules, {len(rb.listings)} listings)"
        )


# -- the policy lab ---------------------------------------------------------------------------


def _lab_rulebook(spec: str, role: str) -> Any:
    """A rulebook for the lab: a file, or ``demo`` / ``naive`` for the shipped ones."""
    from civiscore.lab.simulate import Scenario
    from civiscore.rulebook.load import (
        demo_rulebook_path,
        load_for_simulation,
        naive_rulebook_path,
    )

    shipped = {"demo": demo_rulebook_path(), "naive": naive_rulebook_path()}
    path = Path(spec)
    if not path.exists() and spec in shipped:
        path = shipped[spec]
    elif not path.exists():
        fail(f"--{role} {spec}: no such file; give a rulebook YAML file, or demo or naive")
    rb, warnings = load_for_simulation(path)
    return Scenario.of(path.stem, rb, str(path), path.read_text(encoding="utf-8"), warnings)


def _lab_params(values: list[str] | None) -> Any:
    from pydantic import ValidationError

    from civiscore.lab.behaviour import Parameters

    given: dict[str, str] = {}
    names = ", ".join(Parameters.model_fields)
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in Parameters.model_fields:
            fail(f"--param {item!r}: write NAME=VALUE with NAME one of: {names}")
        given[name.strip()] = value.strip()
    try:
        return Parameters.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        fail(f"--param: {problems} (see docs/policy-lab.md for each parameter's range)")


def _start(text: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(text + "-01" if len(text) == 7 else text)
    except ValueError:
        fail(f"--start {text!r} is not a month; write 2026-01")
    return day.replace(day=1)


@app.command()
def simulate(
    rulebook: Annotated[
        str, typer.Option("--rulebook", help="rulebook YAML to simulate (or demo, naive)")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="the HTML report to write")],
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="a second rulebook run side by side (or demo, naive)"),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            help="vary one field of --rulebook: PATH=V1,V2,..., e.g. "
            "'listings[dishonest_judgment_debtor].duration=P6M,P1Y,P2Y'",
        ),
    ] = None,
    residents: Annotated[int, typer.Option(min=1, help="residents in the city")] = 20_000,
    years: Annotated[int, typer.Option(min=1, max=30, help="years reported")] = 5,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same tables")] = 0,
    start: Annotated[str, typer.Option(help="first reported month")] = "2026-01",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="a behaviour or appeal parameter, NAME=VALUE (repeatable)"),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="DuckDB threads (default: every core)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulate rulebooks over a synthetic city month by month and write an HTML report."""
    from civiscore.lab import report
    from civiscore.lab.simulate import Scenario
    from civiscore.lab.simulate import simulate as run_simulation
    from civiscore.lab.sweep import Sweep, SweepError
    from civiscore.rulebook.load import parse_yaml

    params = _lab_params(param)
    first = _start(start)
    with _errors():
        primary = _lab_rulebook(rulebook, "rulebook")
        scenarios = [primary]
        if compare is not None:
            other = _lab_rulebook(compare, "compare")
            if other.label == primary.label:
                other = Scenario.of(
                    f"{other.label} (compare)",
                    other.rulebook,
                    other.source,
                    Path(other.source).read_text(encoding="utf-8"),
                    other.warnings,
                )
            scenarios.append(Scenario(*_with_role(other, "compare")))
        sweep_meta = None
        if sweep is not None:
            try:
                spec = Sweep.parse(sweep)
                data = parse_yaml(Path(primary.source).read_text(encoding="utf-8"), primary.source)
                variants = spec.variants(
                    data,
                    primary.source,
                    "simulation" if primary.rulebook.simulation_only else "production",
                )
            except SweepError as exc:
                fail(str(exc))
            for text, rb, warnings, yaml_text in variants:
                scenarios.append(
                    Scenario.of(
                        f"{spec.path}={text}",
                        rb,
                        f"{primary.source} with {spec.path}={text}",
                        yaml_text,
                        warnings,
                        "sweep",
                        text,
                    )
                )
            sweep_meta = {"path": spec.path, "values": list(spec.texts)}
        months = 12 * (years + params.warmup_years)
        with _progress(json_out) as progress:
            task = progress.add_task(
                f"simulating {len(scenarios)} rulebook(s), {residents:,} residents",
                total=months,
            )
            result = run_simulation(
                scenarios,
                residents=residents,
                years=years,
                seed=seed,
                start=first,
                params=params,
                threads=threads,
                progress=lambda done, total: progress.update(task, completed=done),
            )
        html_file, tables_dir, _ = report.write(result, out_file, sweep_meta)
    summary = _simulation_summary(result, html_file, tables_dir)
    if json_out:
        _print_json(summary)
        return
    out.print(f"report  {html_file} ({html_file.stat().st_size / 1e6:.1f} MB)")
    out.print(f"tables  {tables_dir}/ (Parquet and CSV)")
    table = Table(title="at the last month-end")
    for col in (
        "rulebook",
        "band A or better",
        "blacklisted",
        "groups flagged",
        "sanctioned in band A+",
        "safeguard warnings",
    ):
        table.add_column(col, justify="left" if col == "rulebook" else "right")
    for row in summary["rulebooks"]:
        table.add_row(
            row["label"],
            f"{row['good_band_share']:.2%}",
            f"{row['blacklisted']:,}",
            f"{row['groups_flagged']:,}",
            f"{row['sanctioned_in_good_band']:,}",
            f"{row['safeguard_warnings']:,}",
        )
    out.print(table)


def _with_role(s: Any, role: str) -> tuple[Any, ...]:
    return (s.label, s.rulebook, s.source, s.sha256, s.warnings, role, s.sweep_value)


def _simulation_summary(result: Any, html_file: Path, tables_dir: Path) -> dict[str, Any]:
    from civiscore.lab.report import rows_of
    from civiscore.lab.simulate import good_bands

    last = 12 * result.meta["years"] - 1
    rows = []
    for s in result.scenarios:
        bands = rows_of(result.tables["bands"], rulebook=s.label, month=last)
        good = sum(r["share"] for r in bands if r["band"] in good_bands(s.rulebook))
        listed = rows_of(result.tables["listings"], rulebook=s.label, month=last, list="blacklist")
        groups = rows_of(result.tables["groups"], rulebook=s.label)
        off = rows_of(
            result.tables["offsetting"], rulebook=s.label, offence="(any active grave sanction)"
        )
        rows.append(
            {
                "label": s.label,
                "role": s.role,
                "version": s.rulebook.version,
                "sha256": s.sha256,
                "good_band_share": good,
                "blacklisted": sum(r["residents"] for r in listed),
                "groups_flagged": sum(
                    1 for g in groups if g["listing_flagged"] or g["benefit_flagged"]
                ),
                "sanctioned_in_good_band": max(r["sanctioned_in_good_band"] for r in off),
                "safeguard_warnings": len(s.warnings),
            }
        )
    return {
        "report": str(html_file),
        "tables": str(tables_dir),
        "residents": result.meta["residents"],
        "years": result.meta["years"],
        "seed": result.meta["seed"],
        "rulebooks": rows,
        "seconds": result.meta["seconds"],
    }


rulebook_app = typer.Typer(help="Rulebooks: compare versions.", no_args_is_help=True)
app.add_typer(rulebook_app, name="rulebook")


@rulebook_app.command("diff")
def rulebook_diff(
    old: Annotated[str, typer.Argument(help="the old rulebook YAML (or demo, naive)")],
    new: Annotated[str, typer.Argument(help="the new rulebook YAML (or demo, naive)")],
    residents: Annotated[
        int, typer.Option(min=0, help="residents of the city the effect is estimated on (0: none)")
    ] = 5_000,
    years: Annotated[int, typer.Option(min=1, max=10, help="years simulated")] = 1,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    start: Annotated[str, typer.Option(help="first simulated month")] = "2026-01",
    json_out: JsonOpt = False,
) -> None:
    """List rule changes between two rulebooks and estimate their effect on a synthetic city."""
    from civiscore.lab.behaviour import Parameters
    from civiscore.lab.diff import effect, structural

    first = _start(start)
    with _errors():
        a = _lab_rulebook(old, "old")
        b = _lab_rulebook(new, "new")
        changes = structural(a.rulebook, b.rulebook)
        estimate = None
        if residents > 0:
            with (
                err.status("estimating the effect on a synthetic city") if not json_out else _null()
            ):
                estimate = effect(
                    a,
                    b,
                    residents=residents,
                    years=years,
                    seed=seed,
                    start=first,
                    params=Parameters(warmup_years=1),
                )
    if json_out:
        _print_json(
            {
                "old": {
                    "version": a.rulebook.version,
                    "sha256": a.sha256,
                    "safeguard_warnings": len(a.warnings),
                },
                "new": {
                    "version": b.rulebook.version,
                    "sha256": b.sha256,
                    "safeguard_warnings": len(b.warnings),
                },
                "changes": [c.as_dict() for c in changes],
                "effect": estimate.as_dict() if estimate else None,
            }
        )
        return
    out.print(f"{a.source} ({a.rulebook.version}) → {b.source} ({b.rulebook.version})")
    for label, s in (("old", a), ("new", b)):
        if s.warnings:
            out.print(
                f"[bold red]{label} rulebook breaks {len(s.warnings)} safeguard(s)[/] "
                "(simulation only)"
            )
    if not changes:
        out.print("no differences")
    table = Table(title=f"{len(changes)} change(s)")
    for col in ("change", "path", "old", "new"):
        table.add_column(col)
    for c in changes:
        # Paths hold brackets (rules[id]) that Rich would read as markup.
        table.add_row(c.kind, escape(c.path), escape(_short(c.old)), escape(_short(c.new)))
    if changes:
        out.print(table)
    if estimate is None:
        return
    out.print(
        f"estimated effect at the end of {estimate.years} year(s) on a synthetic city of "
        f"{estimate.residents:,} residents (seed {estimate.seed}):"
    )
    moves = Table(title="residents moving band")
    for col in ("old band", "new band", "residents"):
        moves.add_column(col, justify="right" if col == "residents" else "left")
    for (x, y), n in estimate.band_moves.items():
        moves.add_row(x, y, f"{n:,}")
    out.print(moves if estimate.band_moves else "no resident changes band")
    lists = Table(title="blacklists")
    for col in ("listing", "listed (old)", "listed (new)", "newly listed", "no longer listed"):
        lists.add_column(col, justify="left" if col == "listing" else "right")
    for name in sorted(set(estimate.listed_old) | set(estimate.listed_new)):
        lists.add_row(
            name,
            f"{estimate.listed_old.get(name, 0):,}",
            f"{estimate.listed_new.get(name, 0):,}",
            f"{estimate.newly_listed.get(name, 0):,}",
            f"{estimate.unlisted.get(name, 0):,}",
        )
    out.print(lists)


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return "—"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
def demo(
    residents: Annotated[
        int, typer.Option(min=1000, help="residents in the synthetic city")
    ] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """synth → init → ingest → score → stats, one denied check and one explanation."""
    from civiscore.demo import run_demo

    with _errors():
        run_demo(_home(), residents=residents, seed=seed, console=out, err=err)


# -- the service ---------------------------------------------------------------------------

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="operational database (default: $CIVISCORE_DATABASE_URL, else SQLite in the home)",
    ),
]


@contextmanager
def _operations(database_url: str | None) -> Iterator[Any]:
    from civiscore.service import Operations
    from civiscore.settings import Settings

    with _errors():
        try:
            ops = Operations.open(_home(), Settings.from_env(database_url=database_url))
        except ValueError as exc:
            fail(str(exc))
        try:
            yield ops
        finally:
            ops.close()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    database_url: DbOpt = None,
) -> None:
    """Run the HTTP API (departments, services, subjects, reviewers, auditors, admins)."""
    import uvicorn

    from civiscore.api.app import create_app
    from civiscore.service import Service
    from civiscore.settings import Settings

    with _errors():
        try:
            settings = Settings.from_env(database_url=database_url)
        except ValueError as exc:
            fail(str(exc))
        service = Service.open(_home(), settings)
    try:
        err.print(f"civiscore serving {_home()} on http://{host}:{port} (docs at /docs)")
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
    finally:
        service.close()


keys_app = typer.Typer(help="API keys: one per party, a role per key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[
        str, typer.Option(help="department, service, subject, reviewer, auditor, admin")
    ],
    name: Annotated[str, typer.Option(help="the party's name, e.g. rail-ticketing")],
    department: Annotated[str | None, typer.Option(help="for a department key")] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="for a service key (repeatable)")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="for a subject key: their resident ID or credit code")
    ] = None,
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key and print it once."""
    from civiscore.api.keys import KeyProblem
    from civiscore.service import SYSTEM, Invalid

    with _operations(database_url) as ops:
        try:
            key, party = ops.create_key_unchecked(
                actor=SYSTEM,
                name=name,
                role=role,
                department=department,
                services=service or [],
                subject_id=subject,
            )
        except (KeyProblem, Invalid) as exc:
            fail(str(exc))
    if json_out:
        _print_json({"name": party.name, "role": party.role, "key": key})
        return
    out.print(f"key for {party.name} ({party.role}) — shown once, store it now:")
    out.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Every key, without the keys themselves."""
    with _operations(database_url) as ops:
        keys = ops.keys.list()
    if json_out:
        _print_json([k.__dict__ for k in keys])
        return
    table = Table(title="keys")
    for col in ("name", "role", "prefix", "scope", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        scope = k.department or ", ".join(k.services) or ("own record" if k.has_subject else "")
        table.add_row(
            k.name,
            k.role,
            k.prefix,
            scope,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="the key's name")], database_url: DbOpt = None
) -> None:
    """Revoke a key at once."""
    from civiscore.service import SYSTEM, NotFound

    with _operations(database_url) as ops:
        try:
            ops.revoke_key(SYSTEM, name)
        except NotFound as exc:
            fail(str(exc))
    out.print(f"revoked {name}")


audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute the hash chain and check every signed head. Exit 0 intact, 1 tampered."""
    with _operations(database_url) as ops:
        report = ops.verify_audit()
    if json_out:
        _print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "heads": report.heads,
                "problems_total": report.problems_total,
                "problems": [
                    {"seq": p.seq, "kind": p.kind, "message": p.message} for p in report.problems
                ],
            }
        )
    elif report.ok:
        out.print(f"audit log intact: {report.entries:,} entries, {report.heads:,} signed heads")
    else:
        for p in report.problems:
            err.print(f"[bold red]{p.kind}[/] {p.message}", highlight=False)
        err.print(f"[bold red]NOT intact[/]: {report.summary()}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI document (checked in as docs/openapi.json)."""
    from civiscore.api.app import api_spec

    sys.stdout.write(json.dumps(api_spec(), indent=2, sort_keys=True) + "\n")
