"""Rulebook validation: one broken fixture per rule, the clean rulebooks, and the docs in step.

Each file in ``rulebook_fixtures/broken/`` is a copy of ``rulebook_fixtures/minimal.yaml`` with
exactly one defect, and starts with ``# expect: <dotted path> :: <part of the message>``. Adding a
validation rule means adding a fixture; nothing else in this file needs to change.
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from civiscore.rulebook import model
from civiscore.rulebook.catalogue import CONTEXTS, PROTECTED, protected_category
from civiscore.rulebook.load import RulebookError, demo_rulebook_path, load, loads
from civiscore.rulebook.model import Duration

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "rulebook_fixtures"
MINIMAL = FIXTURES / "minimal.yaml"
BROKEN = sorted((FIXTURES / "broken").glob("*.yaml"))
DOC = ROOT / "docs" / "rulebook.md"

_EXPECT = re.compile(r"^# expect: (?P<path>\S.*?) :: (?P<message>\S.*)$")


def _expectation(fixture: Path) -> tuple[str, str]:
    first_line = fixture.read_text(encoding="utf-8").splitlines()[0]
    m = _EXPECT.match(first_line)
    assert m, f"{fixture.name} must start with '# expect: <path> :: <message substring>'"
    return m["path"], m["message"]


def test_there_is_a_broken_fixture_per_validation_rule() -> None:
    # A glob that finds nothing would make the parametrised test below pass vacuously.
    assert len(BROKEN) >= 35


@pytest.mark.parametrize("fixture", BROKEN, ids=[f.stem for f in BROKEN])
def test_broken_rulebook_is_refused_with_path_and_message(fixture: Path) -> None:
    path, message = _expectation(fixture)
    with pytest.raises(RulebookError) as caught:
        load(fixture)
    problems = caught.value.problems
    found = [p for p in problems if p.path == path and message in p.message]
    assert found, f"no problem at {path!r} mentioning {message!r}; got:\n" + "\n".join(
        f"  {p.path}: {p.message}" for p in problems
    )
    assert all(p.file == str(fixture) for p in found)


def test_minimal_rulebook_loads_clean() -> None:
    rb = load(MINIMAL)
    assert rb.rulebook == "civiscore-minimal"


def test_demo_rulebook_loads_clean() -> None:
    rb = load(demo_rulebook_path())
    assert rb.listings and rb.rules


def test_dated_points_may_end_with_null() -> None:
    text = MINIMAL.read_text(encoding="utf-8").replace(
        "{2020-01-01: -5, 2022-01-01: -10}", "{2020-01-01: -5, 2022-01-01: null}"
    )
    rb = loads(text)
    assert rb.rule("transport.fare_evasion").points == {
        dt.date(2020, 1, 1): -5.0,
        dt.date(2022, 1, 1): None,
    }


def test_unreadable_file_is_refused_with_its_name(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(RulebookError) as caught:
        load(missing)
    [problem] = caught.value.problems
    assert (problem.file, problem.path) == (str(missing), "(file)")


# --- protected categories --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("religion", "religion"),
        ("civic.religious_attendance", "religion"),
        ("civic.facial_recognition_match", "biometric identification or location tracking"),
        ("transport.gps_location_trace", "biometric identification or location tracking"),
        ("civic.online_speech", "political expression"),
        ("civic.social_media_posting", "political expression"),
        ("civic.petitioning", "political expression"),
        ("civic.gaming_hours", "lawful consumption and leisure"),
        ("market.alcohol_purchase", "lawful consumption and leisure"),
        ("health.hiv_status", "health status"),
        ("ethnic-minority", "ethnicity"),
        ("civic.gender_identity", "sexual orientation"),
        ("employment.union_membership", "union or association membership"),
        ("Civic.Religious", "religion"),
    ],
)
def test_protected_category_is_recognised(name: str, category: str) -> None:
    hit = protected_category(name)
    assert hit is not None
    assert hit[0] == category
    assert hit[1] == PROTECTED[category][1]


@pytest.mark.parametrize(
    "name",
    [
        "transport.speeding",
        "transport.fare_evasion",
        "court.judgment_default",
        "market.false_advertising",
        "tax.late_filing",
        "civic.volunteer_hours",
        "civic.blood_donation",
        *CONTEXTS,
    ],
)
def test_ordinary_names_are_not_protected(name: str) -> None:
    assert protected_category(name) is None


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "months", "days"),
    [("P2Y", 24, 0), ("P12M", 12, 0), ("P6W", 0, 42), ("P180D", 0, 180), ("P1Y2M3W4D", 14, 25)],
)
def test_duration_parses_iso_8601(text: str, months: int, days: int) -> None:
    d = Duration.parse(text)
    assert (d.months, d.days, str(d)) == (months, days, text)


@pytest.mark.parametrize("text", ["", "P", "2Y", "PT12H", "P1.5Y", "two years", "p2y", 730, None])
def test_duration_refuses_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("start", "text", "end"),
    [
        (dt.datetime(2024, 1, 31), "P1M", dt.datetime(2024, 2, 29)),
        (dt.datetime(2023, 1, 31), "P1M", dt.datetime(2023, 2, 28)),
        (dt.datetime(2024, 3, 31), "P1M", dt.datetime(2024, 4, 30)),
        (dt.datetime(2024, 2, 29), "P1Y", dt.datetime(2025, 2, 28)),
        (dt.datetime(2023, 11, 30), "P3M", dt.datetime(2024, 2, 29)),
        # Months first, then days: Jan 31 + 1 month = Feb 29, + 1 day = Mar 1.
        (dt.datetime(2024, 1, 31), "P1M1D", dt.datetime(2024, 3, 1)),
        (dt.datetime(2024, 12, 25, 23, 59), "P1W", dt.datetime(2025, 1, 1, 23, 59)),
    ],
)
def test_duration_add_to_clamps_month_ends(start: dt.datetime, text: str, end: dt.datetime) -> None:
    assert Duration.parse(text).add_to(start) == end


def test_duration_add_to_keeps_the_time_zone() -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    start = dt.datetime(2024, 1, 31, 23, 59, 59, tzinfo=shanghai)
    assert Duration.parse("P1M").add_to(start) == dt.datetime(
        2024, 2, 29, 23, 59, 59, tzinfo=shanghai
    )


# --- docs/rulebook.md stays in step with the model -------------------------------------------


def _doc_lines() -> list[str]:
    """Headings and table rows of the rulebook docs: where a field is documented."""
    return [
        line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith(("#", "|"))
    ]


def _rulebook_models() -> list[type[BaseModel]]:
    return [
        cls
        for _, cls in inspect.getmembers(model, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == model.__name__
    ]


@pytest.mark.parametrize(
    ("owner", "field"),
    [(cls.__name__, name) for cls in _rulebook_models() for name in cls.model_fields],
)
def test_every_model_field_is_documented(owner: str, field: str) -> None:
    assert any(f"`{field}`" in line for line in _doc_lines()), (
        f"{owner}.{field} is not documented in docs/rulebook.md: add `{field}` to a heading or "
        "a table row"
    )


def test_every_catalogue_context_and_protected_category_is_documented() -> None:
    lines = [line for line in _doc_lines() if line.startswith("|")]
    missing = [c for c in CONTEXTS if not any(f"`{c}`" in line for line in lines)]
    missing += [p for p in PROTECTED if not any(p in line for line in lines)]
    assert not missing, f"not in a table of docs/rulebook.md: {missing}"
