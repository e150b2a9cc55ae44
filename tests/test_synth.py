"""The synthetic city: deterministic, valid where it should be, broken where it should be.

Most tests share one 20,000-resident, 5-year city (the size at which every listing must occur);
determinism and chunking use smaller cities.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from civiscore.ids import is_resident_id, is_uscc
from civiscore.rulebook.load import demo_rulebook_path, load
from civiscore.rulebook.model import Rulebook
from civiscore.synth import city as city_module
from civiscore.synth.city import (
    DEFAULT_END,
    DEPARTMENT_FORMATS,
    DEPARTMENT_KINDS,
    RECORD_COLUMNS,
    RECORD_SCHEMA,
    CityFiles,
    write_city,
)

Row = dict[str, Any]
# Region codes of Beijing's 16 districts.
BEIJING = tuple(f"1101{n:02d}" for n in (1, 2, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19))
CST = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture(scope="module")
def rulebook() -> Rulebook:
    return load(demo_rulebook_path())


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityFiles:
    return write_city(tmp_path_factory.mktemp("city"), residents=20_000, years=5, seed=0)


@pytest.fixture(scope="module")
def rows(city: CityFiles) -> dict[str, list[Row]]:
    return {d: read_records(p).to_pylist() for d, p in city.departments.items()}


@pytest.fixture(scope="module")
def faults(rows: dict[str, list[Row]], rulebook: Rulebook) -> dict[str, list[str | None]]:
    return {d: [fault(r, d, rulebook) for r in rs] for d, rs in rows.items()}


@pytest.fixture(scope="module")
def good(rows: dict[str, list[Row]], faults: dict[str, list[str | None]]) -> dict[str, list[Row]]:
    return {
        d: [r for r, f in zip(rs, faults[d], strict=True) if f is None] for d, rs in rows.items()
    }


def read_records(path: Path) -> pa.Table:
    """A department file as an Arrow table with the record schema, whatever its format."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        types = {c: RECORD_SCHEMA.field(c).type for c in RECORD_COLUMNS}
        return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=types))
    options = pa_json.ParseOptions(explicit_schema=RECORD_SCHEMA)
    return pa_json.read_json(path, parse_options=options)


def parse_time(text: str) -> dt.datetime | None:
    """Local (Asia/Shanghai) naive datetime of an occurred_at value, or None if unparseable."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(CST).replace(tzinfo=None)
    return moment


def fault(row: Row, department: str, rulebook: Rulebook) -> str | None:
    """Which of the four corruptions a row has, or None when it is a good row."""
    faults = []
    if not row["record_id"] or not row["subject_id"] or not row["kind"]:
        faults.append("missing")
    if row["kind"] and row["kind"] not in rulebook.departments[department].kinds:
        faults.append("kind")
    subject = row["subject_id"]
    if subject and not (is_resident_id(subject) or is_uscc(subject)):
        faults.append("check")
    if parse_time(row["occurred_at"]) is None:
        faults.append("date")
    assert len(faults) <= 1, f"{department} row has several faults {faults}: {row}"
    return faults[0] if faults else None


# --- the shape of the output ---------------------------------------------------------------


def test_generator_catalogue_matches_the_demo_rulebook(rulebook: Rulebook) -> None:
    assert set(DEPARTMENT_FORMATS) == set(rulebook.departments) == set(DEPARTMENT_KINDS)
    for department, kinds in DEPARTMENT_KINDS.items():
        assert set(kinds) == set(rulebook.departments[department].kinds), department


def test_one_file_per_department_with_the_record_columns(city: CityFiles) -> None:
    for department, fmt in DEPARTMENT_FORMATS.items():
        path = city.departments[department]
        assert path.name == f"{department}.{fmt}"
        table = read_records(path)
        assert tuple(table.column_names) == RECORD_COLUMNS
        assert table.num_rows == city.rows[department] > 0
    assert pq.read_schema(city.departments["transport"]) == RECORD_SCHEMA
    header = city.departments["courts"].read_text().splitlines()[0]
    assert header.replace('"', "") == ",".join(RECORD_COLUMNS)


def test_jsonl_omits_absent_values(city: CityFiles) -> None:
    first = city.departments["tourism"].read_text().splitlines()[0]
    assert first.startswith('{"record_id":"TOU-') and '"quantity"' not in first


def test_occurred_at_uses_three_spellings_within_the_window(
    rows: dict[str, list[Row]], good: dict[str, list[Row]]
) -> None:
    start = dt.datetime(DEFAULT_END.year - 5, DEFAULT_END.month, DEFAULT_END.day)
    end = dt.datetime.combine(DEFAULT_END + dt.timedelta(days=1), dt.time())
    texts = [r["occurred_at"] for rs in good.values() for r in rs]
    assert sum(len(t) == 10 for t in texts) > 0.01 * len(texts)
    assert sum(t.endswith("+08:00") for t in texts) > 0.02 * len(texts)
    assert sum(len(t) == 19 for t in texts) > 0.9 * len(texts)
    for text in texts:
        moment = parse_time(text)
        assert moment is not None and start <= moment < end, text


# --- subjects --------------------------------------------------------------------------------


def test_residents_are_valid_unique_adults_in_all_16_districts(city: CityFiles) -> None:
    residents = pq.read_table(city.residents).to_pylist()
    assert len(residents) == 20_000
    ids = [r["subject_id"] for r in residents]
    assert len(set(ids)) == len(ids)
    districts: set[str] = set()
    for r in residents:
        sid, born = r["subject_id"], r["birth_date"]
        assert is_resident_id(sid), sid
        assert sid[:6] in BEIJING and sid[6:14] == born.strftime("%Y%m%d")
        age = (
            DEFAULT_END.year
            - born.year
            - ((DEFAULT_END.month, DEFAULT_END.day) < (born.month, born.day))
        )
        assert 18 <= age <= 85
        low = {"18-29": 18, "30-44": 30, "45-59": 45, "60+": 60}[r["age_band"]]
        assert low <= age <= {"18-29": 29, "30-44": 44, "45-59": 59, "60+": 85}[r["age_band"]]
        assert 1 <= r["income_decile"] <= 10 and r["hukou"] in ("urban", "rural")
        districts.add(r["district"])
    assert len(districts) == 16
    assert len({sid[:6] for sid in ids}) == 16


def test_organisations_have_valid_beijing_credit_codes(city: CityFiles) -> None:
    orgs = pq.read_table(city.organisations).to_pylist()
    assert len(orgs) == 1_000  # max(10, 20_000 // 20)
    ids = [o["subject_id"] for o in orgs]
    assert len(set(ids)) == len(ids)
    for o in orgs:
        assert is_uscc(o["subject_id"]) and o["subject_id"][:2] == "91"
        assert o["subject_id"][2:8] in BEIJING and o["sector"]


# --- good rows -------------------------------------------------------------------------------


def test_good_rows_name_known_subjects_of_the_allowed_type(
    city: CityFiles, good: dict[str, list[Row]], rulebook: Rulebook
) -> None:
    residents = set(pq.read_table(city.residents, columns=["subject_id"]).column(0).to_pylist())
    orgs = set(pq.read_table(city.organisations, columns=["subject_id"]).column(0).to_pylist())
    for department, rs in good.items():
        catalogue = rulebook.departments[department].kinds
        for r in rs:
            allowed = catalogue[r["kind"]].subjects
            if is_resident_id(r["subject_id"]):
                assert "person" in allowed and r["subject_id"] in residents, r
            else:
                assert "organisation" in allowed and r["subject_id"] in orgs, r


def test_good_rows_carry_required_references_and_quantities(
    good: dict[str, list[Row]], rulebook: Rulebook
) -> None:
    for department, rs in good.items():
        catalogue = rulebook.departments[department].kinds
        for r in rs:
            kind = catalogue[r["kind"]]
            if kind.reference == "required":
                assert r["reference"], r
            if kind.quantity is not None and kind.quantity.required:
                assert r["quantity"] is not None and r["quantity"] > 0, r


def test_every_kind_occurs(good: dict[str, list[Row]]) -> None:
    for department, rs in good.items():
        assert {r["kind"] for r in rs} == set(DEPARTMENT_KINDS[department])


def test_speeding_spans_all_three_rule_bands(good: dict[str, list[Row]]) -> None:
    over = [r["quantity"] for r in good["transport"] if r["kind"] == "transport.speeding"]
    under_20 = sum(q < 20 for q in over)
    over_50 = sum(q >= 50 for q in over)
    assert under_20 > 0.6 * len(over)
    assert 0 < over_50 < 0.1 * len(over)
    assert len(over) - under_20 - over_50 > over_50


def test_record_ids_are_unique_per_department(rows: dict[str, list[Row]]) -> None:
    for department, rs in rows.items():
        ids = [r["record_id"] for r in rs if r["record_id"]]
        assert len(ids) == len(set(ids)), department


def test_retractions_point_at_an_earlier_record_of_the_same_subject_and_kind(
    rows: dict[str, list[Row]], good: dict[str, list[Row]]
) -> None:
    total = 0
    for department, rs in good.items():
        by_id = {r["record_id"]: r for r in rows[department] if r["record_id"]}
        for r in rs:
            if not r["retracts"]:
                continue
            total += 1
            original = by_id[r["retracts"]]
            assert original["subject_id"] == r["subject_id"] and original["kind"] == r["kind"]
            before, after = parse_time(original["occurred_at"]), parse_time(r["occurred_at"])
            assert before is not None and after is not None and before < after, (original, r)
    records = sum(len(rs) for rs in good.values())
    assert 0.002 * records < total < 0.01 * records


def test_settlements_name_an_earlier_default_of_the_same_subject(
    good: dict[str, list[Row]],
) -> None:
    defaults: dict[str, Row] = {}
    for r in good["courts"]:  # in time order; corrections repeat the reference later
        if r["kind"] == "court.judgment_default" and not r["retracts"]:
            defaults.setdefault(r["reference"], r)
    settled = [r for r in good["courts"] if r["kind"] == "court.judgment_settled"]
    assert 0.2 * len(defaults) < len(settled) < 0.5 * len(defaults)
    for s in settled:
        default = defaults[s["reference"]]
        assert default["subject_id"] == s["subject_id"]
        before, after = parse_time(default["occurred_at"]), parse_time(s["occurred_at"])
        assert before is not None and after is not None and before < after


def test_judgment_numbers_look_like_enforcement_case_numbers(good: dict[str, list[Row]]) -> None:
    defaults = [r for r in good["courts"] if r["kind"] == "court.judgment_default"]
    for r in defaults:
        if r["retracts"]:
            continue  # a retraction repeats the reference of an earlier year
        reference, subject = r["reference"], r["subject_id"]
        assert reference.startswith(f"({r['occurred_at'][:4]})Jing") and "Zhi" in reference
        # An all-digit resident ID may pass the USCC check by chance; it is a resident ID first.
        district = subject[2:6] if is_resident_id(subject) else subject[4:8]
        assert reference[10:14] == district


# --- bad rows --------------------------------------------------------------------------------


def test_bad_rows_are_a_small_interleaved_share_of_four_even_kinds(
    city: CityFiles, rows: dict[str, list[Row]], faults: dict[str, list[str | None]]
) -> None:
    overall: Counter[str] = Counter()
    for department, rs in rows.items():
        bad_at = [i for i, f in enumerate(faults[department]) if f is not None]
        assert len(bad_at) == city.bad_rows[department], department
        assert abs(len(bad_at) - 0.01 * len(rs)) <= 1, department
        if len(bad_at) >= 20:
            # Interleaved with good rows, not a block at the end.
            assert bad_at[0] < len(rs) / 4 and bad_at[-1] > 3 * len(rs) / 4, department
        overall.update(f for f in faults[department] if f is not None)
    assert set(overall) == {"missing", "kind", "check", "date"}
    assert max(overall.values()) - min(overall.values()) <= len(rows)


def test_no_bad_rows_when_asked_for_none(tmp_path: Path, rulebook: Rulebook) -> None:
    files = write_city(tmp_path, residents=1_000, bad_rows=0.0)
    assert sum(files.bad_rows.values()) == 0
    for department, path in files.departments.items():
        for r in read_records(path).to_pylist():
            assert fault(r, department, rulebook) is None


# --- the rulebook is exercised ---------------------------------------------------------------


def test_every_decision_listing_is_triggered(
    good: dict[str, list[Row]], rulebook: Rulebook
) -> None:
    kinds = Counter(r["kind"] for rs in good.values() for r in rs)
    for listing in rulebook.listings:
        if listing.trigger.decision:
            assert kinds[listing.trigger.decision] > 0, listing.id
    evasions = [r for r in good["tax"] if r["kind"] == "tax.evasion_decision"]
    assert any(is_uscc(r["subject_id"]) for r in evasions)


def test_some_residents_evade_fares_three_times_within_twelve_months(
    good: dict[str, list[Row]], rulebook: Rulebook
) -> None:
    conduct = rulebook.listing("rail_fare_evader").trigger.conduct
    assert conduct is not None
    times: defaultdict[str, list[dt.datetime]] = defaultdict(list)
    for r in good["transport"]:
        if r["kind"] == conduct.kind and not r["retracts"]:
            moment = parse_time(r["occurred_at"])
            assert moment is not None
            times[r["subject_id"]].append(moment)
    listed = 0
    for moments in times.values():
        moments.sort()
        window = conduct.count - 1
        if any(
            conduct.within.add_to(moments[i]) >= moments[i + window]
            for i in range(len(moments) - window)
        ):
            listed += 1
    # Habitual evaders are about 2 % of residents; most of them qualify at some point.
    assert 100 < listed < 600


def test_a_few_percent_of_residents_reach_the_green_channel_bands(
    good: dict[str, list[Row]], rulebook: Rulebook
) -> None:
    """A conservative score at the window's end: capped merits minus every recent demerit."""
    band_min = {b.band: b.min for b in rulebook.bands}
    threshold = min(band_min[b] or 0 for b in rulebook.listing("green_channel").trigger.band or [])
    as_of = dt.datetime.combine(DEFAULT_END, dt.time.max)
    retracted = {r["retracts"] for rs in good.values() for r in rs if r["retracts"]}
    rules = defaultdict(list)
    for rule in rulebook.rules:
        rules[rule.kind].append(rule)
    since = as_of - dt.timedelta(days=3 * 366)  # no demerit lasts longer than P3Y
    merits: defaultdict[tuple[str, str, int], float] = defaultdict(float)
    demerits: defaultdict[str, float] = defaultdict(float)
    for rs in good.values():
        for r in rs:
            moment = parse_time(r["occurred_at"])
            assert moment is not None
            if moment < since or r["retracts"] or r["record_id"] in retracted:
                continue
            if not is_resident_id(r["subject_id"]):
                continue
            for rule in rules[r["kind"]]:
                if not _applies(rule.when, r["quantity"]):
                    continue
                points = _points(rule, r["quantity"])
                if rule.severity == "merit":
                    valid = rule.valid_for is None or rule.valid_for.add_to(moment) > as_of
                    if valid and moment.year >= as_of.year - 1:
                        merits[(r["subject_id"], rule.id, moment.year)] += points
                else:
                    demerits[r["subject_id"]] += -points
    score: defaultdict[str, float] = defaultdict(lambda: rulebook.base)
    for (subject, rule_id, _), points in merits.items():
        cap = rulebook.rule(rule_id).cap
        score[subject] += min(points, cap.max_points) if cap else points
    for subject, points in demerits.items():
        score[subject] -= points
    top = sum(s >= threshold for s in score.values())
    assert 0.01 * 20_000 < top < 0.10 * 20_000


def _applies(when: Any, quantity: float | None) -> bool:
    if when is None:
        return True
    q = quantity or 0.0
    if when.quantity_at_least is not None and q < when.quantity_at_least:
        return False
    return not (when.quantity_below is not None and q >= when.quantity_below)


def _points(rule: Any, quantity: float | None) -> float:
    def latest(value: Any) -> float:
        return float(value[max(value)] if isinstance(value, dict) else value)

    if rule.points_per_unit is not None:
        points = latest(rule.points_per_unit) * (quantity or 0.0)
        return min(points, rule.max_points_per_record or points)
    return latest(rule.points)


# --- determinism and chunking ----------------------------------------------------------------


def _contents(files: CityFiles) -> dict[str, Any]:
    out: dict[str, Any] = {
        "residents": pq.read_table(files.residents).to_pylist(),
        "organisations": pq.read_table(files.organisations).to_pylist(),
    }
    for department, path in files.departments.items():
        out[department] = read_records(path).to_pylist()
        if path.suffix != ".parquet":
            out[department + " bytes"] = path.read_bytes()
    return out


def test_same_seed_same_rows_other_seed_other_rows(tmp_path: Path) -> None:
    first = write_city(tmp_path / "a", residents=2_000, seed=7)
    again = write_city(tmp_path / "b", residents=2_000, seed=7)
    other = write_city(tmp_path / "c", residents=2_000, seed=8)
    assert first.rows == again.rows and first.bad_rows == again.bad_rows
    assert _contents(first) == _contents(again)
    differ = _contents(other)
    for name, content in _contents(first).items():
        assert content != differ[name], name


def test_chunks_keep_ids_unique_and_report_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(city_module, "CHUNK_SUBJECTS", 700)
    seen: list[int] = []
    files = write_city(tmp_path, residents=3_000, organisations=400, progress=seen.append)
    assert len(seen) == 5 and sum(seen) == 3_400
    residents = pq.read_table(files.residents).column("subject_id").to_pylist()
    orgs = pq.read_table(files.organisations).column("subject_id").to_pylist()
    assert len(set(residents)) == 3_000 and len(set(orgs)) == 400
    courts = read_records(files.departments["courts"]).to_pylist()
    # Judgment numbers are unique across chunks: each names one debtor (corrections repeat it).
    debtors: defaultdict[str, set[str]] = defaultdict(set)
    for r in courts:
        if r["kind"] == "court.judgment_default" and r["subject_id"]:
            debtors[r["reference"]].add(r["subject_id"][:17])
    assert len(debtors) > 50 and all(len(s) == 1 for s in debtors.values())
    for department, path in files.departments.items():
        ids = [r for r in read_records(path).column("record_id").to_pylist() if r]
        assert len(ids) == len(set(ids)), department


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="years"):
        write_city(tmp_path, residents=10, years=0)
    with pytest.raises(ValueError, match="bad_rows"):
        write_city(tmp_path, residents=10, bad_rows=1.5)
