"""The command line end to end through Typer's runner: exit codes, JSON shapes and messages.

Records ingested here are received "now", so every question about them is asked with the
default known-at (now) or an explicit one; ``--at`` is always explicit, and the records' dates
are placed relative to today so that they are in the past and their listings still running.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import re
import stat
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from civiscore.cli import app
from civiscore.ids import pseudonym
from civiscore.rulebook.load import demo_rulebook_path
from civiscore.timeutil import SHANGHAI, now_local
from tests.utils import org_id, resident_id, write_csv

# The runner must not pick up a developer's own civiscore home or key. A wide console keeps
# Rich from truncating table cells whatever terminal the tests run in.
runner = CliRunner(
    env={
        "CIVISCORE_HOME": None,
        "CIVISCORE_KEY_FILE": None,
        "CIVISCORE_BATCH_ROWS": None,
        "CIVISCORE_MEMORY_LIMIT": None,
        "COLUMNS": "200",
    }
)

FIXTURES = Path(__file__).resolve().parent / "rulebook_fixtures"
BROKEN = [
    FIXTURES / "broken" / f"{name}.yaml"
    for name in ("shape_unknown_key_rule", "legal_basis_missing_rule", "listings_no_trigger")
]
DEPARTMENTS = ("courts", "transport", "tourism", "market", "tax", "civil_affairs", "blood_service")
SERVICES = (
    "air_travel",
    "high_speed_rail",
    "star_hotel",
    "private_school_enrolment",
    "civil_service_hiring",
    "government_procurement",
    "deposit_free_rental",
    "fast_track_permits",
)

TODAY = now_local().date()
DEFAULT_DAY = TODAY - dt.timedelta(days=100)  # the judgment default and the other records
AT = (DEFAULT_DAY + dt.timedelta(days=10)).isoformat()  # while the listings run
AT_END = f"{AT}T23:59:59.999999+08:00"  # a date means the end of that day, Shanghai time
BEFORE = (DEFAULT_DAY - dt.timedelta(days=1)).isoformat()

# The debtor's ID ends in the check letter X, so lookups can be tried in lower case.
DEBTOR = next(resident_id(n) for n in range(1, 1000) if resident_id(n).endswith("X"))
CLEAN = resident_id(2)  # one minor speeding record, no listing
STRANGER = resident_id(3)  # in no file at all
COMPANY = org_id(7)  # listed as a seriously dishonest entity


def invoke(home: Path, *args: str) -> Result:
    return runner.invoke(app, ["--home", str(home), *args])


def expect(result: Result, code: int) -> Result:
    """Assert the exit code, showing what the command said when it is not the expected one."""
    assert result.exit_code == code, (
        f"exit {result.exit_code}, expected {code}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nexception: {result.exception!r}"
    )
    return result


def flat(text: str) -> str:
    """Rich wraps at the console width; compare words, not line breaks."""
    return " ".join(text.split())


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def _expectation(fixture: Path) -> tuple[str, str]:
    """The ``# expect: <path> :: <message>`` header of a broken rulebook fixture."""
    m = re.match(r"# expect: (.+?) :: (.+)", fixture.read_text().splitlines()[0])
    assert m, fixture
    return m[1], m[2]


def _record(record_id: str, subject_id: str, kind: str, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "record_id": record_id,
        "subject_id": subject_id,
        "kind": kind,
        "occurred_at": DEFAULT_DAY.isoformat(),
    }
    return row | extra


def _populate(home: Path, folder: Path) -> Path:
    """Initialise ``home`` and ingest a judgment default, a speeding ticket and a market listing."""
    expect(invoke(home, "init"), 0)
    files: dict[str, list[dict[str, object]]] = {
        "courts": [_record("C1", DEBTOR, "court.judgment_default", reference="(2026)J1")],
        "transport": [
            _record("T1", CLEAN, "transport.speeding", quantity=10, occurred_at=f"{AT}T08:30")
        ],
        "market": [_record("M1", COMPANY, "market.serious_violation", reference="SAMR-1")],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for department, rows in files.items():
        path = write_csv(folder / f"{department}.csv", rows)
        [summary] = as_json(
            expect(invoke(home, "ingest", "--department", department, str(path), "--json"), 0)
        )
        assert (summary["accepted"], summary["rejected"]) == (1, 0), summary
    return home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A freshly initialised home."""
    h = tmp_path / "home"
    expect(invoke(h, "init"), 0)
    return h


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    """A home with records, for tests that write (score, stats)."""
    return _populate(tmp_path / "home", tmp_path / "incoming")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with records shared by the read-only commands (check, explain)."""
    base = tmp_path_factory.mktemp("records")
    return _populate(base / "home", base / "incoming")


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_the_store_and_a_secret_key(tmp_path: Path) -> None:
    h = tmp_path / "home"
    result = expect(invoke(h, "init"), 0)
    key = h / "pseudonym.key"
    assert (h / "store.duckdb").is_file()
    assert re.fullmatch(r"[0-9a-f]{64}", key.read_text().strip())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = flat(result.stdout)
    assert "created; keep it secret and backed up" in text
    assert "rulebook version 2026.1 — published" in text


def test_init_twice_keeps_the_key_and_says_the_rulebook_is_already_published(home: Path) -> None:
    key = (home / "pseudonym.key").read_text()
    text = flat(expect(invoke(home, "init"), 0).stdout)
    assert (home / "pseudonym.key").read_text() == key
    assert "kept (already present)" in text
    assert "version 2026.1 — already published" in text


def test_init_with_another_rulebook_publishes_it(tmp_path: Path) -> None:
    result = expect(
        invoke(tmp_path / "home", "init", "--rulebook", str(FIXTURES / "minimal.yaml")), 0
    )
    assert "rulebook version 1 — published" in flat(result.stdout)


@pytest.mark.parametrize("fixture", BROKEN, ids=[f.stem for f in BROKEN])
def test_init_with_a_broken_rulebook_exits_2_with_file_path_and_message(
    tmp_path: Path, fixture: Path
) -> None:
    path, message = _expectation(fixture)
    result = expect(invoke(tmp_path / "home", "init", "--rulebook", str(fixture)), 2)
    assert "rulebook refused" in result.stderr
    assert flat(f"{fixture}: {path}: ") in flat(result.stderr)
    assert flat(message) in flat(result.stderr)
    assert result.stdout == ""


def test_a_refused_init_leaves_the_home_usable_in_the_same_process(tmp_path: Path) -> None:
    h = tmp_path / "home"
    # The leaked connection sits in a reference cycle; without a collection in between the
    # outcome does not depend on when the garbage collector happens to run.
    gc.disable()
    try:
        expect(invoke(h, "init", "--rulebook", str(BROKEN[0])), 2)
        result = invoke(h, "check", CLEAN, "air_travel", "--at", AT)
    finally:
        gc.enable()
    expect(result, 2)
    # A refused rulebook creates nothing: the home still needs `init`.
    assert "init" in result.stderr
    assert not (h / "store.duckdb").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("check", CLEAN, "air_travel"),
        ("explain", CLEAN),
        ("score",),
        ("stats",),
        ("ingest", "--department", "courts", "courts.csv"),
    ],
    ids=lambda a: a[0],
)
def test_commands_before_init_exit_2_and_say_to_run_init(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    h = tmp_path / "home"
    result = expect(invoke(h, *args), 2)
    assert f"run `civiscore --home {h} init`" in result.stderr
    assert not h.exists()  # asking does not create a home


def test_a_missing_key_exits_2_and_says_where_to_find_it(home: Path) -> None:
    (home / "pseudonym.key").unlink()
    result = expect(invoke(home, "check", CLEAN, "air_travel", "--at", AT), 2)
    assert "pseudonym key" in result.stderr
    assert "CIVISCORE_KEY_FILE" in result.stderr


# -- lint ---------------------------------------------------------------------------------------


def test_lint_the_demo_rulebook_is_clean() -> None:
    result = expect(runner.invoke(app, ["lint", str(demo_rulebook_path())]), 0)
    assert "rulebook civiscore-demo version 2026.1 is clean" in flat(result.stdout)
    clean = as_json(expect(runner.invoke(app, ["lint", str(demo_rulebook_path()), "--json"]), 0))
    assert clean == {"ok": True, "rulebook": "civiscore-demo", "version": "2026.1"}


@pytest.mark.parametrize("fixture", BROKEN, ids=[f.stem for f in BROKEN])
def test_lint_a_broken_rulebook_exits_2_naming_the_dotted_path(fixture: Path) -> None:
    path, message = _expectation(fixture)
    result = expect(runner.invoke(app, ["lint", str(fixture)]), 2)
    assert flat(f"{fixture}: {path}: {message}") in flat(result.stderr)
    assert "1 problem(s)" in result.stderr


@pytest.mark.parametrize("fixture", BROKEN, ids=[f.stem for f in BROKEN])
def test_lint_json_lists_each_problem_with_file_path_and_message(fixture: Path) -> None:
    path, message = _expectation(fixture)
    data = as_json(expect(runner.invoke(app, ["lint", str(fixture), "--json"]), 2))
    assert set(data) == {"ok", "problems"}
    assert data["ok"] is False
    assert data["problems"]
    assert all(set(p) == {"file", "path", "message"} for p in data["problems"])
    assert any(
        p["file"] == str(fixture) and p["path"] == path and message in p["message"]
        for p in data["problems"]
    )


def test_lint_a_missing_file_exits_2_saying_it_cannot_be_read(tmp_path: Path) -> None:
    result = expect(runner.invoke(app, ["lint", str(tmp_path / "nope.yaml")]), 2)
    assert "cannot read the file" in result.stderr


# -- synth --------------------------------------------------------------------------------------


def _synth(out: Path, seed: int = 0) -> dict[str, Any]:
    args = ["synth", "--out", str(out), "--residents", "1000", "--years", "1", "--json"]
    data: dict[str, Any] = as_json(expect(runner.invoke(app, [*args, "--seed", str(seed)]), 0))
    return data


def test_synth_json_summary_lists_seven_departments_with_rows(tmp_path: Path) -> None:
    data = _synth(tmp_path / "city")
    assert set(data["departments"]) == set(DEPARTMENTS)
    assert set(data["rows"]) == set(DEPARTMENTS)
    assert all(Path(p).is_file() for p in data["departments"].values())
    assert Path(data["residents"]).is_file() and Path(data["organisations"]).is_file()
    assert sum(data["rows"].values()) > 0
    assert all(0 <= data["bad_rows"][d] <= data["rows"][d] for d in DEPARTMENTS)


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first, second, other = (tmp_path / "a", tmp_path / "b", tmp_path / "c")
    _synth(first, seed=5)
    _synth(second, seed=5)
    _synth(other, seed=6)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert any(name.endswith(".csv") for name in names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert any((first / n).read_bytes() != (other / n).read_bytes() for n in names)


def test_synth_with_a_bad_end_date_exits_2(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path / "city"), "--residents", "10", "--end", "31/10/2026"]
    result = expect(runner.invoke(app, args), 2)
    assert "is not a date; write 2026-10-31" in result.stderr


# -- ingest -------------------------------------------------------------------------------------


def _court_rows() -> list[dict[str, object]]:
    good = {"kind": "court.judgment_default", "occurred_at": BEFORE, "reference": "J"}
    bad_check_digit = CLEAN[:-1] + ("0" if CLEAN[-1] != "0" else "1")
    return [
        {**good, "record_id": "C1", "subject_id": DEBTOR},
        {**good, "record_id": "C2", "subject_id": CLEAN},
        {**good, "record_id": "C3", "subject_id": bad_check_digit},
        {**good, "record_id": "C4", "subject_id": STRANGER, "occurred_at": "2099-01-01"},
    ]


def test_ingest_json_counts_and_rejects_then_a_rerun_finds_duplicates(
    home: Path, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "courts.csv", _court_rows())
    args = ("ingest", "--department", "courts", str(path), "--json")
    [first] = as_json(expect(invoke(home, *args), 0))
    assert first["file"] == str(path)
    counts = (first["rows"], first["accepted"], first["duplicates"], first["rejected"])
    assert counts == (4, 2, 0, 2)
    assert first["rejected_by_field"] == {"subject_id": 1, "occurred_at": 1}
    rejects = Path(first["rejects_file"])
    assert rejects.is_file() and rejects.is_relative_to(home)
    assert STRANGER not in rejects.read_text()  # rejects carry masked IDs only

    [again] = as_json(expect(invoke(home, *args), 0))
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 2, 2)


def test_ingest_table_names_the_rejects_file(home: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "courts.csv", _court_rows())
    result = expect(invoke(home, "ingest", "--department", "courts", str(path)), 0)
    assert "rejected rows of" in flat(result.stdout)
    assert "courts.csv.rejects.csv" in result.stdout


def test_ingest_several_files_reports_each(home: Path, tmp_path: Path) -> None:
    rows = _court_rows()[:2]
    paths = [write_csv(tmp_path / f"courts-{i}.csv", rows[i : i + 1]) for i in range(2)]
    summaries = as_json(
        expect(invoke(home, "ingest", "--department", "courts", *map(str, paths), "--json"), 0)
    )
    assert [(s["file"], s["accepted"]) for s in summaries] == [(str(p), 1) for p in paths]


def test_ingest_for_an_unknown_department_exits_2_listing_the_departments(
    home: Path, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "x.csv", _court_rows())
    result = expect(invoke(home, "ingest", "--department", "police", str(path)), 2)
    assert "unknown department 'police'" in result.stderr
    assert ", ".join(DEPARTMENTS) in result.stderr


def test_ingest_a_missing_file_exits_2(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    result = expect(invoke(home, "ingest", "--department", "courts", str(missing)), 2)
    assert f"{missing}: no such file" in result.stderr


# -- score --------------------------------------------------------------------------------------


def test_score_json_describes_the_snapshot(populated: Path) -> None:
    data = as_json(expect(invoke(populated, "score", "--at", AT, "--json"), 0))
    assert set(data) == {"snapshot_id", "rulebook_version", "as_of", "known_at", "subjects"}
    assert data["subjects"] == 3
    assert data["as_of"] == AT_END
    assert data["rulebook_version"] == "2026.1"
    again = as_json(expect(invoke(populated, "score", "--at", AT, "--json"), 0))
    assert again["snapshot_id"] == data["snapshot_id"] + 1


def test_score_before_any_rulebook_was_in_force_exits_2(populated: Path) -> None:
    result = expect(invoke(populated, "score", "--at", "2010-01-01"), 2)
    assert "no rulebook was in force on 2010-01-01" in result.stderr


# -- check --------------------------------------------------------------------------------------

DECISION_KEYS = {"allowed", "service", "as_of", "known_at", "rulebook_version", "reasons"}
REASON_KEYS = {
    "code",
    "listing",
    "name",
    "legal_basis",
    "since",
    "until",
    "department",
    "reference",
    "record_id",
    "remedy",
    "appeal",
}


def test_check_a_judgment_debtor_is_denied_with_reasons(records: Path) -> None:
    result = expect(invoke(records, "check", DEBTOR, "high_speed_rail", "--at", AT, "--json"), 1)
    data = as_json(result)
    assert set(data) == DECISION_KEYS
    assert (data["allowed"], data["service"], data["as_of"]) == (False, "high_speed_rail", AT_END)
    [reason] = data["reasons"]
    assert set(reason) == REASON_KEYS
    assert reason["listing"] == "dishonest_judgment_debtor"
    assert "Fa Gai Cai Jin [2018] No. 385" in reason["legal_basis"]  # the restriction's law
    assert "Fa Shi [2017] No. 7" in reason["legal_basis"]  # and the listing's
    since = dt.datetime.fromisoformat(reason["since"])
    until = dt.datetime.fromisoformat(reason["until"])
    assert since == dt.datetime.combine(DEFAULT_DAY, dt.time(), SHANGHAI)
    assert 730 <= (until - since).days <= 731  # a two-year term
    assert (reason["department"], reason["record_id"], reason["reference"]) == (
        "courts",
        "C1",
        "(2026)J1",
    )
    assert "settle the judgment" in reason["remedy"]
    appeal_by = (dt.date.fromisoformat(AT) + dt.timedelta(days=60)).isoformat()
    assert f"Appeal by {appeal_by}" in reason["appeal"]
    assert DEBTOR not in result.stdout


def test_check_denied_prints_the_reasons(records: Path) -> None:
    text = flat(expect(invoke(records, "check", DEBTOR, "air_travel", "--at", AT), 1).stdout)
    assert "DENIED — air_travel" in text
    assert "Dishonest judgment debtor" in text
    assert "decided by courts, record C1" in text
    assert "Appeal by" in text


@pytest.mark.parametrize("subject", [CLEAN, STRANGER], ids=["with-a-minor-record", "unknown"])
def test_check_a_clean_resident_is_allowed(records: Path, subject: str) -> None:
    data = as_json(expect(invoke(records, "check", subject, "air_travel", "--at", AT, "--json"), 0))
    assert (data["allowed"], data["reasons"]) == (True, [])
    text = flat(expect(invoke(records, "check", subject, "air_travel", "--at", AT), 0).stdout)
    assert "ALLOWED — air_travel" in text


def test_check_before_the_default_is_allowed(records: Path) -> None:
    expect(invoke(records, "check", DEBTOR, "high_speed_rail", "--at", BEFORE), 0)


def test_check_known_at_before_the_record_arrived_is_allowed(records: Path) -> None:
    yesterday = (TODAY - dt.timedelta(days=1)).isoformat()
    args = ("check", DEBTOR, "high_speed_rail", "--at", AT, "--known-at", yesterday, "--json")
    data = as_json(expect(invoke(records, *args), 0))
    assert data["known_at"] == f"{yesterday}T23:59:59.999999+08:00"


def test_check_accepts_a_lower_case_check_letter_and_spaces(records: Path) -> None:
    assert DEBTOR.endswith("X")
    expect(invoke(records, "check", f"  {DEBTOR.lower()} ", "high_speed_rail", "--at", AT), 1)


def test_check_an_organisation_by_its_credit_code(records: Path) -> None:
    data = as_json(
        expect(invoke(records, "check", COMPANY, "government_procurement", "--at", AT, "--json"), 1)
    )
    assert [r["listing"] for r in data["reasons"]] == ["seriously_dishonest_entity"]
    expect(invoke(records, "check", COMPANY, "air_travel", "--at", AT), 0)


def test_check_a_benefit_not_earned_is_refused_with_the_condition(records: Path) -> None:
    data = as_json(
        expect(invoke(records, "check", CLEAN, "deposit_free_rental", "--at", AT, "--json"), 1)
    )
    [reason] = data["reasons"]
    assert reason["code"] == "not_granted:green_channel"
    assert "granted while the band is AAA or AA" in reason["remedy"]


def test_check_an_invalid_id_exits_2_about_check_digits(records: Path) -> None:
    wrong = DEBTOR[:-1] + "0"
    result = expect(invoke(records, "check", wrong, "air_travel", "--at", AT), 2)
    assert "fails the check digit" in result.stderr
    assert result.stdout == ""


def test_check_an_id_of_the_wrong_length_exits_2(records: Path) -> None:
    result = expect(invoke(records, "check", DEBTOR[:17], "air_travel", "--at", AT), 2)
    assert "has 17 characters" in result.stderr


def test_check_an_unknown_service_exits_2_listing_the_services(records: Path) -> None:
    result = expect(invoke(records, "check", CLEAN, "spaceflight", "--at", AT), 2)
    assert "unknown service 'spaceflight'" in result.stderr
    assert ", ".join(SERVICES) in result.stderr


@pytest.mark.parametrize("option", ["--at", "--known-at"])
def test_check_with_a_bad_moment_exits_2_with_an_iso_8601_hint(records: Path, option: str) -> None:
    result = expect(invoke(records, "check", CLEAN, "air_travel", option, "last week"), 2)
    assert "'last week' is not an ISO 8601 date or date-time" in result.stderr
    assert "write 2025-03-03" in result.stderr


def test_check_with_full_width_digits_is_answered_or_refused_never_a_crash(
    records: Path,
) -> None:
    full_width = DEBTOR[:17].translate(str.maketrans("0123456789", "０１２３４５６７８９")) + "X"
    result = invoke(records, "check", full_width, "high_speed_rail", "--at", AT)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code in (1, 2)


# -- explain ------------------------------------------------------------------------------------

LINE_KEYS = {
    "record_id",
    "department",
    "kind",
    "occurred_at",
    "rule",
    "points",
    "context",
    "legal_basis",
    "counts_until",
}


def test_explain_json_traces_the_score_to_each_record(records: Path) -> None:
    result = expect(invoke(records, "explain", DEBTOR, "--at", AT, "--json"), 0)
    data = as_json(result)
    required = {"as_of", "rulebook_version", "base", "score", "band", "contexts", "lines"}
    assert required | {"not_counted", "listings", "benefits"} <= set(data)
    assert data["as_of"] == AT_END
    points = sum(Decimal(str(line["points"])) for line in data["lines"])
    assert Decimal(str(data["base"])) + points == Decimal(str(data["score"]))
    assert (data["score"], data["band"], data["benefits"]) == (900, "B", [])
    [line] = data["lines"]
    assert set(line) >= LINE_KEYS
    assert (line["record_id"], line["department"], line["rule"], line["points"]) == (
        "C1",
        "courts",
        "court.judgment_default",
        -100,
    )
    assert line["context"] == "judicial" and data["contexts"] == {"judicial": -100}
    assert "Fa Shi [2017] No. 7" in line["legal_basis"]
    assert dt.datetime.fromisoformat(line["counts_until"]).date() > dt.date.fromisoformat(AT)
    assert [lst["listing"] for lst in data["listings"]] == ["dishonest_judgment_debtor"]
    # The raw ID is never echoed back, in any case or in part.
    assert DEBTOR not in result.stdout and DEBTOR.lower() not in result.stdout
    assert DEBTOR[:17] not in result.stdout


def test_explain_json_for_a_clean_resident_adds_up(records: Path) -> None:
    data = as_json(expect(invoke(records, "explain", CLEAN, "--at", AT, "--json"), 0))
    assert data["base"] + sum(line["points"] for line in data["lines"]) == data["score"] == 998
    assert data["listings"] == []


def test_explain_prints_the_score_records_and_listings(records: Path) -> None:
    result = expect(invoke(records, "explain", DEBTOR, "--at", AT), 0)
    text = flat(result.stdout)
    assert "= base" in text and "band B" in text
    assert "records that count" in text
    assert "Dishonest judgment debtor" in text
    assert DEBTOR not in result.stdout


def test_explain_an_invalid_id_exits_2(records: Path) -> None:
    result = expect(invoke(records, "explain", "not-an-id", "--at", AT), 2)
    assert "has 9 characters" in result.stderr


# -- stats --------------------------------------------------------------------------------------


def test_stats_before_any_score_exits_2_saying_to_run_score(populated: Path) -> None:
    result = expect(invoke(populated, "stats", "--json"), 2)
    assert "no snapshot yet; run `civiscore score` first" in result.stderr


def test_stats_json_counts_groups_and_nothing_about_any_one_subject(populated: Path) -> None:
    expect(invoke(populated, "score", "--at", AT), 0)
    result = expect(invoke(populated, "stats", "--json"), 0)
    data = as_json(result)
    assert set(data) == {
        "snapshot_id",
        "as_of",
        "known_at",
        "rulebook_version",
        "subjects",
        "mean_score",
        "band_capped_by_grave_sanction",
        "bands",
        "listings",
        "restricted_per_service",
        "benefits_per_service",
    }
    assert data["as_of"] == AT_END
    assert sum(data["bands"].values()) == data["subjects"] == 3
    assert data["bands"]["B"] == 2  # the debtor and the company, at 900 each
    assert data["listings"]["dishonest_judgment_debtor"] == 1
    assert data["listings"]["seriously_dishonest_entity"] == 1
    assert data["restricted_per_service"] == {
        "air_travel": 1,
        "high_speed_rail": 1,
        "star_hotel": 1,
        "private_school_enrolment": 1,
        "civil_service_hiring": 1,
        "government_procurement": 2,
    }
    assert data["benefits_per_service"] == {"deposit_free_rental": 0, "fast_track_permits": 0}
    groups = ("bands", "listings", "restricted_per_service", "benefits_per_service")
    assert all(isinstance(n, int) for g in groups for n in data[g].values())
    key = bytes.fromhex((populated / "pseudonym.key").read_text().strip())
    for raw in (DEBTOR, CLEAN, COMPANY):
        assert raw not in result.stdout
        assert pseudonym(key, raw) not in result.stdout


def test_stats_at_a_moment_uses_that_snapshot(populated: Path) -> None:
    snap = as_json(expect(invoke(populated, "score", "--at", AT, "--json"), 0))
    expect(invoke(populated, "score", "--at", BEFORE), 0)
    data = as_json(expect(invoke(populated, "stats", "--at", AT, "--json"), 0))
    assert data["snapshot_id"] == snap["snapshot_id"]
    text = flat(expect(invoke(populated, "stats", "--at", AT), 0).stdout)
    assert "subjects per band" in text


# -- demo ---------------------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_demo_runs_end_to_end_in_the_default_home(in_tmp: Path) -> None:
    result = runner.invoke(app, ["demo", "--residents", "2000"])
    expect(result, 0)
    home = in_tmp / "civiscore-data"
    assert (home / "store.duckdb").is_file() and (home / "pseudonym.key").is_file()
    text = flat(result.stdout)
    assert "DENIED — high_speed_rail" in text
    assert "= base" in text and "records that count" in text  # the explain panel
    # The denied subject the demo shows is denied again by the command it suggests.
    m = re.search(r"check (\w{18}) high_speed_rail", text)
    assert m, text
    expect(runner.invoke(app, ["check", m[1], "high_speed_rail"]), 1)
    # It ends with how to open the interface, and a key for every role that has pages.
    assert "serve" in text and "http://127.0.0.1:8000/" in text
    keys = json.loads((home / "demo-keys.json").read_text())
    assert {role for role, _ in keys.values()} >= {"admin", "reviewer", "service", "subject"}
    assert all(key in text for _, key in keys.values())


def test_memory_limit_bounds_the_store_of_each_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from civiscore.workspace import Workspace

    limits: list[str] = []
    close = Workspace.close

    def noting_close(ws: Workspace) -> None:
        row = ws.store.con.execute("SELECT current_setting('memory_limit')").fetchall()
        limits.append(str(row[0][0]))
        close(ws)

    monkeypatch.setattr(Workspace, "close", noting_close)
    home = tmp_path / "home"
    expect(invoke(home, "init"), 0)
    limits.clear()
    expect(runner.invoke(app, ["--home", str(home), "--memory-limit", "300MB", "score"]), 0)
    expect(
        runner.invoke(app, ["--home", str(home), "score"], env={"CIVISCORE_MEMORY_LIMIT": "200MB"}),
        0,
    )
    expect(invoke(home, "score"), 0)
    # DuckDB counts in powers of ten and reports in powers of two.
    assert limits[:2] == ["286.1 MiB", "190.7 MiB"]
    assert limits[2] not in limits[:2]


def test_a_memory_limit_duckdb_cannot_read_is_refused_with_an_example(tmp_path: Path) -> None:
    home = tmp_path / "home"
    expect(invoke(home, "init"), 0)
    result = expect(runner.invoke(app, ["--home", str(home), "--memory-limit", "lots", "score"]), 2)
    assert "--memory-limit 'lots' is not a size DuckDB accepts" in result.stderr
    assert "4GB" in result.stderr
