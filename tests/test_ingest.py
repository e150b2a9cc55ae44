"""Ingestion: formats, row-level rejects with file/row/field, idempotency, crash recovery."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civiscore.ids import id_types_and_keys
from civiscore.ingest.readers import FileError
from civiscore.ingest.validate import PARSE_ANY_TS, PARSE_FAST_TS, SPACES, may_need_trim
from civiscore.store.base import BATCH_SCHEMA
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.workspace import Workspace
from tests.utils import org_id, resident_id, write_csv

RECEIVED = dt.datetime(2026, 1, 1)


def _good(n: int, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "record_id": f"R{n}",
        "subject_id": resident_id(n),
        "kind": "transport.speeding",
        "occurred_at": "2025-05-01T08:00:00",
        "quantity": 12,
    }
    row.update(over)
    return row


def _rejects(path: str | None) -> list[dict[str, str]]:
    assert path is not None
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_rejects_name_row_line_field_and_reason(ws: Workspace, tmp_path: Path) -> None:
    rows = [
        _good(1),
        _good(2, subject_id=resident_id(2)[:-1] + ("0" if resident_id(2)[-1] != "0" else "1")),
        _good(3, kind="transport.teleportation"),
        _good(4, record_id=""),
        _good(5, occurred_at="2023-13-45"),
        _good(6, quantity="fast"),
        _good(7, quantity=""),
        _good(8, occurred_at="2099-01-01"),
        _good(9, subject_id=org_id(9)),  # speeding is for residents only
        _good(10, occurred_at="2025-05-01T08:00:00+00:00"),
    ]
    path = write_csv(tmp_path / "transport.csv", rows)
    s = ws.ingest("transport", path, received_at=RECEIVED)
    assert (s.rows, s.accepted, s.rejected, s.duplicates) == (10, 2, 8, 0)
    rejects = _rejects(s.rejects_file)
    by_row = {int(r["row"]): r for r in rejects}
    assert {r: by_row[r]["field"] for r in by_row} == {
        2: "subject_id",
        3: "kind",
        4: "record_id",
        5: "occurred_at",
        6: "quantity",
        7: "quantity",
        8: "occurred_at",
        9: "subject_id",
    }
    assert all(int(r["line"]) == int(r["row"]) + 1 for r in rejects)
    assert "check digit" in by_row[2]["reason"]
    assert "unknown kind 'transport.teleportation'" in by_row[3]["reason"]
    assert "known kinds: transport.drunk_driving" in by_row[3]["reason"]
    assert "ISO 8601" in by_row[5]["reason"]
    assert "not a number" in by_row[6]["reason"]
    assert "needs a quantity (percent over the limit)" in by_row[7]["reason"]
    assert "in the future" in by_row[8]["reason"]
    assert "residents only" in by_row[9]["reason"]
    # The raw ID never lands in civiscore's files: rejects carry a masked form.
    assert by_row[2]["subject_id_masked"].count("*") == 8
    assert resident_id(1) not in Path(s.rejects_file or "").read_text()
    # An offset is converted to Shanghai time.
    stored = ws.store.con.execute(
        "SELECT occurred_at FROM records WHERE record_id = 'R10'"
    ).fetchall()
    assert stored == [(dt.datetime(2025, 5, 1, 16, 0),)]


def test_malformed_csv_line_is_rejected_with_its_line_and_later_lines_keep_theirs(
    ws: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    good = [_good(i) for i in range(1, 4)]
    write_csv(path, good)
    text = path.read_text().splitlines()
    text.insert(2, "broken,line,with,too,many,fields,here,and,more")
    text.append(
        ",".join(["R9", resident_id(9), "transport.teleportation", "2025-01-01", "", "", ""])
    )
    path.write_text("\n".join(text) + "\n")
    s = ws.ingest("transport", path, received_at=RECEIVED)
    assert (s.accepted, s.rejected) == (3, 2)
    rejects = {r["field"]: r for r in _rejects(s.rejects_file)}
    assert rejects["line"]["line"] == "3"
    assert "header's columns" in rejects["line"]["reason"]
    assert rejects["kind"]["line"] == "6"


def test_jsonl_and_parquet_are_read_with_positions(ws: Workspace, tmp_path: Path) -> None:
    jl = tmp_path / "tourism.jsonl"
    lines = [
        json.dumps(
            {
                "record_id": "T1",
                "subject_id": resident_id(1),
                "kind": "tourism.uncivil_conduct",
                "occurred_at": "2025-01-02",
            }
        ),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps(
            {"record_id": "T2", "subject_id": resident_id(2), "kind": "tourism.uncivil_conduct"}
        ),
    ]
    jl.write_text("\n".join(lines) + "\n")
    s = ws.ingest("tourism", jl, received_at=RECEIVED)
    assert (s.accepted, s.rejected) == (1, 3)
    lines_of = {r["line"]: r["field"] for r in _rejects(s.rejects_file)}
    assert lines_of == {"3": "line", "4": "line", "5": "occurred_at"}

    pqf = tmp_path / "blood.parquet"
    pq.write_table(
        pa.table(
            {
                "record_id": ["B1", "B2"],
                "subject_id": [resident_id(1), "123"],
                "kind": ["civic.blood_donation"] * 2,
                "occurred_at": pa.array([dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2)]),
            }
        ),
        pqf,
    )
    s = ws.ingest("blood_service", pqf, received_at=RECEIVED)
    assert (s.accepted, s.rejected) == (1, 1)
    (rej,) = _rejects(s.rejects_file)
    assert (rej["row"], rej["line"], rej["field"]) == ("2", "", "subject_id")
    assert "has 3 characters" in rej["reason"]


@pytest.mark.parametrize(
    ("values", "kind"),
    [(pa.array([12.5, float("nan"), -1.0, None]), "double"), (pa.array([12, 7, -1, None]), "int")],
)
def test_a_parquet_files_numeric_quantity_is_checked_as_a_number(
    ws: Workspace, tmp_path: Path, values: pa.Array, kind: str
) -> None:
    """A Parquet quantity that is a number is read as one, checked like text, and shown in the
    rejects file."""
    path = tmp_path / f"transport-{kind}.parquet"
    rows = [_good(n) for n in range(1, 5)]
    table = pa.Table.from_pylist(rows).drop_columns(["quantity"])
    pq.write_table(table.append_column("quantity", values), path)
    s = ws.ingest("transport", path, received_at=RECEIVED)
    stored = ws.store.con.execute("SELECT record_id, quantity FROM records ORDER BY 1").fetchall()
    rejects = {r["row"]: (r["field"], r["quantity"], r["reason"]) for r in _rejects(s.rejects_file)}
    if kind == "double":
        assert stored == [("R1", 12.5)]
        assert rejects["2"][:2] == ("quantity", "nan") and "finite" in rejects["2"][2]
    else:
        assert stored == [("R1", 12.0), ("R2", 7.0)]
    assert rejects["3"][:2] == ("quantity", "-1.0") and "zero or more" in rejects["3"][2]
    assert rejects["4"][:2] == ("quantity", "") and "needs a quantity" in rejects["4"][2]


def test_file_level_errors_name_the_file_and_the_fix(ws: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("record_id,subject,kind\nA,B,C\n")
    with pytest.raises(FileError, match=r"x\.csv: line 1 \(header\): missing column\(s\)"):
        ws.ingest("transport", bad)
    (tmp_path / "y.xlsx").write_bytes(b"PK")
    with pytest.raises(FileError, match=r"unknown file type '\.xlsx'"):
        ws.ingest("transport", tmp_path / "y.xlsx")
    with pytest.raises(FileError, match="no such file"):
        ws.ingest("transport", tmp_path / "missing.csv")
    with pytest.raises(FileError, match="unknown department 'weather'"):
        ws.ingest("weather", write_csv(tmp_path / "z.csv", [_good(1)]))


def test_reingest_and_overlap_add_nothing_twice_and_conflicts_are_rejected(
    ws: Workspace, tmp_path: Path
) -> None:
    a = write_csv(tmp_path / "a.csv", [_good(i) for i in range(1, 6)])
    b = write_csv(tmp_path / "b.csv", [_good(i) for i in range(4, 9)])
    s1 = ws.ingest("transport", a, received_at=RECEIVED)
    s2 = ws.ingest("transport", a, received_at=RECEIVED)
    s3 = ws.ingest("transport", b, received_at=RECEIVED)
    assert (s1.accepted, s2.accepted, s2.duplicates) == (5, 0, 5)
    assert (s3.accepted, s3.duplicates) == (3, 2)
    changed = write_csv(tmp_path / "c.csv", [_good(1, quantity=60)])
    s4 = ws.ingest("transport", changed, received_at=RECEIVED)
    assert (s4.accepted, s4.rejected) == (0, 1)
    (rej,) = _rejects(s4.rejects_file)
    assert rej["field"] == "record_id" and "retracts" in rej["reason"]
    count = ws.store.con.execute("SELECT count(*) FROM records").fetchall()[0][0]
    assert count == 8
    # The same record_id in another department is another record.
    other = write_csv(tmp_path / "d.csv", [_good(1, kind="tourism.uncivil_conduct")])
    assert ws.ingest("tourism", other, received_at=RECEIVED).accepted == 1


def test_a_conflict_is_rejected_with_its_row_and_line_in_every_format(
    ws: Workspace, tmp_path: Path
) -> None:
    """A row refused because its record_id is stored with other content was accepted by the
    checks, so its line comes from the stage, not from the raw rows: a CSV's is its row + 1, a
    JSON Lines' its row (blank lines count), Parquet has none."""
    ws.ingest("transport", write_csv(tmp_path / "a.csv", [_good(1)]), received_at=RECEIVED)
    changed = write_csv(tmp_path / "b.csv", [_good(2), _good(3), _good(1, quantity=60)])
    (rej,) = _rejects(ws.ingest("transport", changed, received_at=RECEIVED).rejects_file)
    assert (rej["row"], rej["line"], rej["field"]) == ("3", "4", "record_id")

    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(["", json.dumps(_good(4)), json.dumps(_good(1, quantity=61))]) + "\n")
    (rej,) = _rejects(ws.ingest("transport", jl, received_at=RECEIVED).rejects_file)
    assert (rej["row"], rej["line"], rej["field"]) == ("3", "3", "record_id")

    pqf = tmp_path / "b.parquet"
    rows = [_good(5), _good(1, quantity=62)]
    pq.write_table(pa.Table.from_pylist([{**r, "quantity": str(r["quantity"])} for r in rows]), pqf)
    (rej,) = _rejects(ws.ingest("transport", pqf, received_at=RECEIVED).rejects_file)
    assert (rej["row"], rej["line"], rej["field"]) == ("2", "", "record_id")


def test_new_subjects_are_numbered_in_pseudonym_order_whatever_the_files_order(
    tmp_path: Path,
) -> None:
    """A subject's number depends on the store's subjects and the file's, not on row order: two
    stores with one key, given the same files with rows in opposite orders, number everyone
    alike; each file's new subjects follow the store's highest number, by pseudonym."""
    first = [_good(n) for n in range(1, 40)]
    second = [_good(n) for n in range(30, 70)]  # 30-39 are known by then
    Workspace.init(tmp_path / "a")[0].close()
    Workspace.init(tmp_path / "b")[0].close()
    key = (tmp_path / "a" / "pseudonym.key").read_bytes()
    (tmp_path / "b" / "pseudonym.key").write_bytes(key)
    numbering = []
    for store, rows_in in (("a", lambda rows: rows), ("b", lambda rows: rows[::-1])):
        w = Workspace.open(tmp_path / store)
        try:
            for i, rows in enumerate((first, second)):
                path = write_csv(tmp_path / f"{store}{i}.csv", rows_in(rows))
                w.ingest("transport", path, received_at=RECEIVED)
                sids = w.store.con.execute(
                    "SELECT pseudonym, sid FROM subjects ORDER BY sid"
                ).fetchall()
                assert [sid for _, sid in sids] == list(range(1, len(sids) + 1))
                new = sids[39 if i else 0 :]  # this file's new subjects, after the last file's
                assert [p for p, _ in new] == sorted(p for p, _ in new)
            numbering.append(dict(sids))
        finally:
            w.close()
    assert numbering[0] == numbering[1] and len(numbering[0]) == 69


def test_raw_ids_are_never_stored(ws: Workspace, tmp_path: Path) -> None:
    raw = resident_id(42)
    ws.ingest("transport", write_csv(tmp_path / "a.csv", [_good(42)]), received_at=RECEIVED)
    ws.store.con.execute("CHECKPOINT")
    assert raw.encode() not in (ws.home / "store.duckdb").read_bytes()
    # Nor the number ingestion groups the file's rows by, which spells the ID as well. DuckDB
    # compresses integers, so it is looked for in every stored integer column, not in bytes.
    number = int(id_types_and_keys(pa.array([raw]))[1][0].as_py())
    columns = ws.store.con.execute(
        """SELECT c.table_name, c.column_name FROM duckdb_columns() c
        JOIN duckdb_tables() t USING (database_name, schema_name, table_name)
        WHERE NOT t.temporary AND (c.data_type IN ('BIGINT', 'UBIGINT', 'HUGEINT', 'UHUGEINT')
                                   OR c.data_type LIKE 'DECIMAL%')"""
    ).fetchall()
    assert columns, "no integer column to look in"
    for table, column in columns:
        (hits,) = ws.store.con.execute(
            f'SELECT count(*) FROM "{table}" WHERE TRY_CAST("{column}" AS HUGEINT) = {number}'
        ).fetchall()[0]
        assert hits == 0, f"{table}.{column} holds the ID's number"
    assert ws.sid_of(raw) is not None


def _big_csv(path: Path, rows: int) -> None:
    ids = [resident_id(i) for i in range(1000)]
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT 'R' || i AS record_id, ids[(i % 1000) + 1] AS subject_id,
                   'transport.speeding' AS kind,
                   strftime(TIMESTAMP '2025-01-01' + to_seconds(i), '%Y-%m-%dT%H:%M:%S')
                     AS occurred_at,
                   (i % 70)::VARCHAR AS quantity, NULL AS reference, NULL AS retracts
            FROM range({rows}) t(i), (SELECT {ids!r}::VARCHAR[] AS ids))
            TO '{path}' (HEADER, DELIMITER ',')"""
    )
    con.close()


@pytest.mark.slow
def test_kill_9_during_ingest_stores_all_or_nothing_and_rerun_completes(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    Workspace.init(home)[0].close()
    total = 400_000
    src = tmp_path / "transport.csv"
    _big_csv(src, total)
    env = {**os.environ, "CIVISCORE_BATCH_ROWS": "20000"}
    cmd = [
        sys.executable,
        "-m",
        "civiscore",
        "--home",
        str(home),
        "ingest",
        "--department",
        "transport",
        str(src),
        "--json",
    ]

    def stored() -> tuple[int, int]:
        """(records stored, ingest runs started and never finished)."""
        con = duckdb.connect(str(home / "store.duckdb"), read_only=True)
        try:
            n, distinct = con.execute(
                "SELECT count(*), count(DISTINCT record_id) FROM records"
            ).fetchall()[0]
            (unfinished,) = con.execute(
                "SELECT count(*) FROM ingest_runs WHERE finished_at IS NULL"
            ).fetchall()[0]
        finally:
            con.close()
        assert n == distinct, "a crash must never duplicate records"
        assert n in (0, total), "a file is stored whole or not at all"
        return int(n), int(unfinished)

    delay = 1.0
    for _attempt in range(10):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n, unfinished = stored()
        if n == 0 and unfinished:  # killed while the file was being read, checked or stored
            break
        if n == total:  # finished before the kill: start again, kill sooner
            (home / "store.duckdb").unlink()
            (home / "store.duckdb.wal").unlink(missing_ok=True)
            Workspace.init(home)[0].close()
            delay /= 2
        else:  # killed before the ingest began
            delay *= 1.5
    else:
        pytest.fail("could not interrupt the ingest in the middle")
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    (summary,) = json.loads(done.stdout)
    assert summary["accepted"] == total and summary["duplicates"] == 0
    assert stored()[0] == total
    # Re-running the finished file stores nothing twice.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    (summary,) = json.loads(again.stdout)
    assert summary["accepted"] == 0 and summary["duplicates"] == total


# One file row: (record number, subject, quantity, its flaw). Record number 0 is the id "\t",
# which DuckDB's trim keeps (a real id); a "blank" row's id is empty or spaces only (missing, so
# rejected), a "kind" row's kind is unknown (rejected).
_rows = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.integers(1, 3),
        st.sampled_from([10, 20]),
        st.sampled_from(["none", "none", "kind", "blank"]),
    ),
    min_size=1,
    max_size=12,
)
_BLANKS = ["", " ", "\u3000", "\u00a0 "]


def _record_id(n: int) -> str:
    return "\t" if n == 0 else f"R{n}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.tuples(_rows, st.booleans()), min_size=1, max_size=3))
# In id order but for a repeat of "\t", which only a look for repeats within the file finds.
@example(files=[([(0, 1, 10, "none"), (0, 1, 10, "none"), (1, 2, 10, "blank")], True)])
@example(files=[([(1, 1, 10, "none"), (2, 1, 10, "blank"), (3, 1, 10, "none")], True)])
def test_repeated_record_ids_follow_first_accepted_wins(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[tuple[list[tuple[int, int, int, str]], bool]],
) -> None:
    """Within a file and across files, the first accepted row of a record_id is stored; later
    rows with the same content are duplicates, with other content conflicts (rejected);
    rejected rows never claim a record_id. Files are often in record_id order (the store then
    skips its search for repeats within the file), with blank ids among them that must not
    hide a repeat."""
    home = tmp_path_factory.mktemp("home")
    ws = Workspace.init(home)[0]
    try:
        stored: dict[int, tuple[int, int]] = {}
        for i, (unordered, in_order) in enumerate(files):
            rows = sorted(unordered, key=lambda r: _record_id(r[0])) if in_order else unordered
            expect = {"accepted": 0, "duplicates": 0, "rejected": 0}
            for n, subject, qty, flaw in rows:
                if flaw != "none":
                    expect["rejected"] += 1
                elif n not in stored:
                    stored[n] = (subject, qty)
                    expect["accepted"] += 1
                elif stored[n] == (subject, qty):
                    expect["duplicates"] += 1
                else:
                    expect["rejected"] += 1
            path = write_csv(
                home / f"f{i}.csv",
                [
                    _good(
                        n,
                        record_id=_BLANKS[(n + s) % len(_BLANKS)]
                        if flaw == "blank"
                        else _record_id(n),
                        subject_id=resident_id(s),
                        quantity=q,
                        kind="transport.nope" if flaw == "kind" else "transport.speeding",
                    )
                    for n, s, q, flaw in rows
                ],
            )
            got = ws.ingest("transport", path, received_at=RECEIVED)
            assert {k: getattr(got, k) for k in expect} == expect
        content = ws.store.con.execute(
            "SELECT r.record_id, s.pseudonym, r.quantity FROM records r JOIN subjects s "
            "USING (sid) ORDER BY r.record_id"
        ).fetchall()
        assert [(rid, q) for rid, _, q in content] == sorted(
            (_record_id(n), float(q)) for n, (_, q) in stored.items()
        )
        assert len({p for _, p, _ in content}) == len({s for s, _ in stored.values()})
    finally:
        ws.close()


def test_read_ahead_stops_its_reader_when_the_consumer_stops() -> None:
    import threading

    from civiscore.ingest.readers import read_ahead

    batches = (pa.table({"n": [i]}) for i in range(2))
    reader = read_ahead(batches, depth=1)
    next(reader)
    time.sleep(0.3)  # the reader has read everything and waits to say so, the queue full
    reader.close()  # the consumer gives up: the thread must still end
    assert not [t for t in threading.enumerate() if t.name == "civiscore-read-ahead"]

    def failing() -> Iterator[pa.Table]:
        yield pa.table({"n": [1]})
        raise FileError("broken file")

    with pytest.raises(FileError, match="broken file"):
        list(read_ahead(failing()))


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2024-02-29", dt.datetime(2024, 2, 29)),
        ("2024-03-05T14:22", dt.datetime(2024, 3, 5, 14, 22)),
        ("2024-03-05 14:22:09", dt.datetime(2024, 3, 5, 14, 22, 9)),
        ("2024-03-05T14:22:09.123456", dt.datetime(2024, 3, 5, 14, 22, 9, 123456)),
        ("2024-03-05T06:22:09Z", dt.datetime(2024, 3, 5, 14, 22, 9)),
        ("2024-03-05T14:22:09+08:00", dt.datetime(2024, 3, 5, 14, 22, 9)),
        ("2023-02-29", None),  # no such day
        ("2024-3-5", None),  # ISO 8601 writes two digits
        ("2024-03-05T14", None),
        ("2024-03-05T14:22:09.1234567", None),  # more than microseconds, without an offset
        ("20240305", None),
    ],
)
def test_occurred_at_is_read_as_iso_8601_in_shanghai_time(
    ws: Workspace, tmp_path: Path, text: str, stored: dt.datetime | None
) -> None:
    """Dates, local date-times and offsets as the rejects' reason says; anything else rejected."""
    path = write_csv(tmp_path / "t.csv", [_good(1, occurred_at=text)])
    summary = ws.ingest("transport", path, received_at=RECEIVED)
    got = ws.store.con.execute("SELECT occurred_at FROM records").fetchall()
    if stored is None:
        assert summary.rejected == 1 and got == []
        assert "ISO 8601" in _rejects(summary.rejects_file)[0]["reason"]
    else:
        assert summary.accepted == 1 and got == [(stored,)]


_TS_CHARS = "0123456789-T:+ .Z\t\n\x0b\x0c\r\u3000\u00a0\u0663"


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 19), st.sampled_from(_TS_CHARS), st.sampled_from("sid")),
        max_size=4,
    )
)
@example(edits=[(18, " ", "s")])  # '2024-03-05T14:22:0 ': strptime reads 14:22:00
@example(edits=[(0, "\t", "s")])  # '\t024-03-05T14:22:07': strptime reads the year 24
def test_the_fast_timestamp_path_agrees_with_the_long_way(
    edits: list[tuple[int, str, str]],
) -> None:
    """The common shape's fast path (strptime) gives the regular expressions' answer or none."""
    text = list("2024-03-05T14:22:07")
    for at, char, how in edits:
        at = min(at, len(text))
        if how == "s" and at < len(text):
            text[at] = char
        elif how == "i":
            text.insert(at, char)
        elif at < len(text):
            del text[at]
    occ = "".join(text)
    fast, full = duckdb.sql(
        f"SELECT {PARSE_FAST_TS}, {PARSE_ANY_TS} FROM (SELECT $occ::VARCHAR AS occ)",
        params={"occ": occ},
    ).fetchall()[0]
    assert fast is None or fast == full, occ


# Each row: (record number, subject number, what is wrong with it, how its ID is written).
_FLAWS = ("none", "kind", "check digit", "date", "quantity", "wrong subject type")
_SPELLINGS = ("plain", "spaces", "ideographic and no-break spaces", "lower case x")


def _spelt(raw: str, spelling: str) -> str:
    if spelling == "spaces":
        return f"  {raw} "
    if spelling == "ideographic and no-break spaces":
        return f"\u3000{raw}\u00a0"
    if spelling == "lower case x":
        return raw.lower()
    return raw


def _flawed(n: int, subject: int, flaw: str, spelling: str) -> dict[str, object]:
    raw = resident_id(subject)
    if flaw == "check digit":
        raw = raw[:-1] + ("0" if raw[-1] != "0" else "1")
    elif flaw == "wrong subject type":
        raw = org_id(subject)
    over: dict[str, object] = {"subject_id": _spelt(raw, spelling)}
    if flaw == "kind":
        over["kind"] = "transport.nope"
    elif flaw == "date":
        over["occurred_at"] = "2025-02-30"
    elif flaw == "quantity":
        over["quantity"] = "lots"
    row = _good(n, **over)
    if "spaces" in spelling:  # the other fields padded alike, trimmed as the ID is
        for name in ("record_id", "kind", "occurred_at", "quantity"):
            row[name] = _spelt(str(row[name]), spelling)
    return row


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(_FLAWS), st.sampled_from(_SPELLINGS)),
        min_size=1,
        max_size=25,
    ),
    batch_rows=st.integers(1, 30),
)
def test_rows_are_checked_alike_whatever_the_batches_and_the_ids_spelling(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, str, str]],
    batch_rows: int,
) -> None:
    """Rows are checked batch by batch as the file is read: what is stored, what is rejected
    and why, and who becomes a subject do not depend on where the batches break. An ID is
    read trimmed of spaces and upper-cased, the other fields trimmed (only in the batches where
    a value might need it), and a rejected row's occurred_at is reported as sent; a subject
    none of whose rows is accepted is not stored at all."""
    home = tmp_path_factory.mktemp("batches")
    path = write_csv(
        home / "f.csv", [_flawed(n, s, flaw, sp) for n, (s, flaw, sp) in enumerate(rows)]
    )
    seen = []
    for size in (batch_rows, 10_000):
        ws = Workspace.init(home / f"home{size}")[0]
        try:
            got = ws.ingest("transport", path, received_at=RECEIVED, batch_rows=size)
            # Each home has its own key, so subjects are compared by who they are.
            who = {ws.sid_of(resident_id(s)): s for s in range(8)}
            stored = [
                (rid, who.get(sid), kind, at, qty)
                for rid, sid, kind, at, qty in ws.store.con.execute(
                    "SELECT record_id, sid, kind, occurred_at, quantity FROM records "
                    "ORDER BY record_id"
                ).fetchall()
            ]
            rejects = (
                [
                    (r["row"], r["field"], r["reason"], r["occurred_at"])
                    for r in _rejects(got.rejects_file)
                ]
                if got.rejected
                else []
            )
            subjects = {s for sid, s in who.items() if sid is not None}
            seen.append((got.accepted, got.rejected, stored, rejects, subjects))
        finally:
            ws.close()
    assert seen[0] == seen[1]
    accepted, rejected, stored, rejects, subjects = seen[0]
    good = [n for n, (_, flaw, _) in enumerate(rows) if flaw == "none"]
    assert accepted == len(good) and rejected == len(rows) - len(good)
    assert [(rid, s) for rid, s, *_ in stored] == sorted((f"R{n}", rows[n][0]) for n in good)
    assert [int(row) for row, *_ in rejects] == [
        n + 1 for n, (_, flaw, _) in enumerate(rows) if flaw != "none"
    ]
    sent = {n + 1: _flawed(n, s, flaw, sp)["occurred_at"] for n, (s, flaw, sp) in enumerate(rows)}
    assert [occurred for *_, occurred in rejects] == [sent[int(row)] for row, *_ in rejects]
    assert subjects == {rows[n][0] for n in good}


def test_an_id_is_trimmed_of_what_duckdb_trims() -> None:
    """IDs are trimmed with pyarrow on the reader's thread, every other field with DuckDB's
    ``trim``: both strip the same characters, the Unicode space separators (an ID typed with
    an ideographic space is read as before), and neither strips a tab or a line break."""
    import unicodedata

    import duckdb

    from civiscore.ingest.validate import SPACES

    separators = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Zs"}
    assert set(SPACES) == separators
    con = duckdb.connect()
    for ch in sorted(separators | {"\t", "\n", "\r", "\u200b", "\ufeff", "\u0085"}):
        (trimmed,) = con.execute("SELECT trim(?)", [f"{ch}A{ch}"]).fetchall()[0]
        assert (trimmed == "A") == (ch in separators), repr(ch)


_NOT_PLAIN = SPACES + "\t\n\x7f\u4eac\u0663"  # spaces, controls and other non-ASCII


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.none() | st.text(alphabet="AZaz09-:~" + _NOT_PLAIN, max_size=4), max_size=12
    ),
    cut=st.integers(0, 3),
    large=st.booleans(),
)
def test_a_batch_is_left_untrimmed_only_when_trimming_would_change_nothing(
    values: list[str | None], cut: int, large: bool
) -> None:
    """A field is trimmed only in the batches where some value might need it
    (``may_need_trim``): where it says none does, DuckDB's ``trim`` changes no value, whatever
    the spaces, empty and null values, slices and chunks; and plain ASCII values are left alone,
    which is what makes it pay."""
    kind = pa.large_string() if large else pa.string()
    whole = pa.array(values, kind)
    column = pa.chunked_array([whole.slice(0, cut), whole.slice(cut)], kind)
    for candidate in (column, whole.slice(cut)):
        if not may_need_trim(candidate):
            kept = candidate.to_pylist()
            if not kept:
                continue
            sql = "SELECT trim(v) FROM unnest(?) t(v)"
            trimmed = [r[0] for r in duckdb.connect().execute(sql, [kept]).fetchall()]
            assert trimmed == kept
    plain = [v.strip(_NOT_PLAIN) or None for v in values if v]
    assert not may_need_trim(pa.array(plain, kind))


def test_an_id_ordered_file_keeps_its_claim_through_blank_ids() -> None:
    """A file in record_id order is stored without a search for repeats within it; a few rows
    with no id (rejected) keep it so, and an id of whitespace DuckDB keeps (a tab) does not."""
    from civiscore.ingest.run import _Increasing

    def claim(*batches: list[str | None]) -> bool:
        seen = _Increasing()
        for batch in batches:
            seen.update(pa.chunked_array([pa.array(batch, pa.string())]))
        return seen.still

    assert claim(["R1", "", "R2", None], [" ", "R3", "\u3000"], ["R4"])
    assert not claim(["R1", "R2"], ["R2"])
    assert not claim(["\t", "R1"], ["\t"])
    assert not claim(["R2", "", "R1"])


def _increasing_the_long_way(batches: list[list[str | None]]) -> bool:
    """Whether record ids rise, found the general way: ids blank to DuckDB's ``trim`` skipped,
    the rest trimmed of all white space and compared."""
    from civiscore.ingest.validate import SPACES

    last: str | None = None
    for batch in batches:
        column = pa.array(batch, pa.string())
        present = pc.not_equal(pc.utf8_trim(column, SPACES), "")
        for value in pc.utf8_trim_whitespace(pc.filter(column, present)).to_pylist():
            if last is not None and not value > last:
                return False
            last = value
    return True


@given(
    st.lists(
        st.lists(
            st.none() | st.text(alphabet=st.sampled_from("AB \t\u3000\u00a0\n"), max_size=3),
            max_size=5,
        ),
        max_size=4,
    )
)
@example([["A", "B"], [" B"]])
@example([["A", "\t"], ["B"]])
def test_the_id_order_claim_agrees_with_the_long_way(batches: list[list[str | None]]) -> None:
    """The claim that record ids rise takes a short way when no id in a batch is blank; it
    gives the general way's answer whatever the batches hold."""
    from civiscore.ingest.run import _Increasing

    seen = _Increasing()
    for batch in batches:
        seen.update(pa.chunked_array([pa.array(batch, pa.string())], pa.string()))
    assert seen.still == _increasing_the_long_way(batches)


@pytest.mark.parametrize("where", ["in memory", "spilled", "spilled, then in memory"])
def test_a_batch_splits_into_accepted_and_rejected_rows_with_reasons(where: str) -> None:
    """Each staged batch's rows are accepted or rejected once each, a rejected one with its
    field and reason: rows whose line the parser could not tell (no row number) included,
    whether the rejected rows waited in memory, in a temporary table, or some in each."""
    import duckdb

    from civiscore.ingest.readers import RAW_SCHEMA, _malformed_table
    from civiscore.ingest.validate import (
        CHECKED,
        REJECTED,
        append_to_stage,
        check_stage,
        create_stage,
        prepare,
    )
    from civiscore.rulebook.load import demo_rulebook_path, load

    dep = load(demo_rulebook_path()).departments["transport"]
    good = [_good(n) for n in range(1, 5)]
    good[1]["kind"] = "transport.nope"
    good[2]["kind"] = "transport.fare_evasion"
    good[3]["occurred_at"] = "yesterday"
    raw = pa.Table.from_pylist(
        [
            {"row": n, "line": n + 1, "malformed": None, **{k: str(v) for k, v in r.items()}}
            for n, r in enumerate(good, start=1)
        ],
        schema=RAW_SCHEMA,
    )
    con = duckdb.connect()
    stage = create_stage(con, "transport", dep, RECEIVED, 0 if where == "spilled" else 1 << 20)
    append_to_stage(stage, prepare(raw))
    if where == "spilled, then in memory":
        stage.spill()
    append_to_stage(stage, prepare(_malformed_table([(-1, "a,b"), (9, "c")], "torn")))
    append_to_stage(stage, prepare(raw.slice(0, 1).set_column(0, "row", pa.array([5]))))
    check_stage(stage, b"k" * 32)
    # The stage keeps each kind as its number in the catalogue; the view names it again.
    assert con.execute(f"SELECT row, kind FROM {CHECKED} ORDER BY row").fetchall() == [
        (1, "transport.speeding"),
        (3, "transport.fare_evasion"),
        (5, "transport.speeding"),
    ]
    assert con.execute(
        f"SELECT row, field, reason IS NOT NULL FROM {REJECTED} ORDER BY row NULLS FIRST"
    ).fetchall() == [
        (None, "line", True),
        (2, "kind", True),
        (4, "occurred_at", True),
        (8, "line", True),
    ]


def test_many_new_subjects_are_numbered_in_pseudonym_order() -> None:
    """Enough new subjects at once that DuckDB sorts and writes them on every thread: still
    numbered in pseudonym order, with no gap."""
    n = 600_000
    pseudonyms = [f"{(i * 2654435761) % 2**32:08x}{i:08x}" for i in range(n)]
    batch = pa.table(
        {
            "row": pa.array(range(1, n + 1), pa.int64()),
            "line": pa.nulls(n, pa.int64()),
            "record_id": [f"R{i:07d}" for i in range(n)],
            "pseudonym": pseudonyms,
            "subject_type": pa.array(["person"] * n),
            "kind": pa.array(["transport.speeding"] * n),
            "occurred_at": pa.array([dt.datetime(2025, 5, 1)] * n, pa.timestamp("us")),
            "quantity": pa.array([12.0] * n),
            "reference": pa.nulls(n, pa.string()),
            "retracts": pa.nulls(n, pa.string()),
        },
        schema=BATCH_SCHEMA,
    )
    store = DuckDBStore.memory()
    try:
        store.con.execute("SET threads = 4")
        assert store.write_batch("transport", batch, RECEIVED).accepted == n
        numbered = [
            p
            for (p,) in store.con.execute("SELECT pseudonym FROM subjects ORDER BY sid").fetchall()
        ]
        assert numbered == sorted(pseudonyms)
        assert store.con.execute("SELECT min(sid), max(sid) FROM subjects").fetchall() == [(1, n)]
    finally:
        store.close()
