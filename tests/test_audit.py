"""The audit log: every edit, deletion, reordering, truncation and forgery shows in verify.

Each test runs on SQLite and on PostgreSQL (the ``ops_url`` fixture). Tampering is done the way
an attacker with database access would do it: writing to the tables directly, around AuditLog.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import doctest
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text, update

import civiscore.audit.log
import civiscore.audit.signing
from civiscore.audit import (
    AuditEvent,
    AuditLog,
    AuditLogBroken,
    BadKeyFile,
    Problem,
    PublicKeyMissing,
    RawIdRefused,
    SigningKeyMissing,
    VerifyReport,
    anchor_path,
    create_signing_key,
    key_id,
    load_public_key,
    load_signing_key,
)
from civiscore.audit.signing import head_message, public_key_path
from civiscore.store.migrate import upgrade
from civiscore.store.operational import ROLES, AuditEntry, make_engine
from tests.utils import org_id, resident_id

T0 = dt.datetime(2025, 3, 1, 9, 0)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CIVISCORE_AUDIT_KEY_FILE", raising=False)
    path = tmp_path / "home"
    create_signing_key(path)
    return path


@pytest.fixture
def engine(ops_url: str) -> Iterator[Engine]:
    eng = make_engine(ops_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def audit(engine: Engine, home: Path) -> AuditLog:
    return AuditLog.for_home(engine, home)


def event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"dept-{i % 3}",
        role="department",
        action="record.submit",
        subject=f"{i:032x}",
        detail={"record_id": f"R{i}", "rows": i, "note": "élan ✓"},
    )


def fill(audit: AuditLog, n: int = 10) -> None:
    """Entries 1..n, one append (and so one signed head) each."""
    for i in range(n):
        audit.append([event(i)], T0 + dt.timedelta(minutes=i))


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def edit(engine: Engine, seq: int, **values: Any) -> None:
    """Change an entry in place, as someone with write access to the database could."""
    with engine.begin() as conn:
        conn.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(**values))


def verify(audit: AuditLog, home: Path) -> VerifyReport:
    """Verify with the home's public key and the log's own anchor file, if it has one."""
    return audit.verify(load_public_key(home))


def found(report: VerifyReport) -> set[tuple[int | None, str]]:
    return {(p.seq, p.kind) for p in report.problems}


# -- the log as it should be ---------------------------------------------------------------------


def test_append_and_verify_ok(audit: AuditLog, home: Path) -> None:
    fill(audit, 7)
    seqs = audit.append([event(7), event(8), event(9)], T0 + dt.timedelta(hours=1))
    assert seqs == [8, 9, 10]
    report = verify(audit, home)
    assert report.problems == []
    assert report.ok
    assert (report.entries, report.heads, report.anchored_heads) == (10, 8, 8)
    assert report.signed_through == 10
    assert report.summary() == (
        "audit log intact: 10 entries, 8 signed heads, 8 anchored, all signed through entry 10"
    )


def test_an_empty_log_verifies(audit: AuditLog, home: Path) -> None:
    assert audit.append([], T0) == []
    report = verify(audit, home)
    assert report.ok and report.entries == 0 and report.heads == 0
    assert audit.latest_head() is None


def test_entries_pages_and_filters(audit: AuditLog) -> None:
    fill(audit, 10)
    assert [e.seq for e in audit.entries(after_seq=3, limit=2)] == [4, 5]
    assert [e.seq for e in audit.entries(after_seq=8)] == [9, 10]
    assert [e.seq for e in audit.entries(subject=f"{4:032x}")] == [5]
    assert audit.entries(action="appeal.decide") == []
    first = audit.entries(limit=1)[0]
    assert first.detail == '{"note":"élan ✓","record_id":"R0","rows":0}'
    assert first.detail_data() == {"record_id": "R0", "rows": 0, "note": "élan ✓"}
    assert first.at == T0 and first.prev_hash == "0" * 64
    assert audit.count() == 10
    head = audit.latest_head()
    assert head is not None and head.seq == 10 and head.hash == audit.entries(after_seq=9)[0].hash
    with pytest.raises(ValueError, match="limit must be between 1 and 10000"):
        audit.entries(limit=0)


def test_the_chain_continues_across_restarts(ops_url: str, home: Path) -> None:
    first = make_engine(ops_url)
    upgrade(first)
    fill(AuditLog.for_home(first, home), 5)
    first.dispose()
    second = make_engine(ops_url)
    log = AuditLog.for_home(second, home)
    assert log.append([event(5), event(6)], T0 + dt.timedelta(days=1)) == [6, 7]
    entries = log.entries()
    assert entries[5].prev_hash == entries[4].hash
    assert verify(log, home).ok
    second.dispose()


def test_aware_times_are_logged_as_shanghai_wall_clock(audit: AuditLog, home: Path) -> None:
    audit.append([event(0)], dt.datetime(2025, 3, 1, 1, 0, tzinfo=dt.UTC))
    assert audit.entries()[0].at == dt.datetime(2025, 3, 1, 9, 0)
    assert verify(audit, home).ok


# -- tampering with entries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "someone-else"),
        ("role", "admin"),
        ("action", "record.retract"),
        ("subject", None),
        ("detail", '{"note":"élan ✓","record_id":"R4","rows":0}'),
        ("at", T0 - dt.timedelta(days=1)),
    ],
)
def test_an_edited_entry_is_named(
    audit: AuditLog, home: Path, engine: Engine, column: str, value: Any
) -> None:
    fill(audit)
    edit(engine, 5, **{column: value})
    report = verify(audit, home)
    assert not report.ok
    assert report.problems == [
        Problem(5, "hash", "entry 5: hash does not match its content (edited?)")
    ]


def test_an_edit_with_a_recomputed_hash_breaks_the_signed_head(
    audit: AuditLog, home: Path, engine: Engine
) -> None:
    fill(audit)
    entry = audit.entries(after_seq=4, limit=1)[0]
    forged = civiscore.audit.log.entry_hash(
        entry.prev_hash,
        5,
        entry.at,
        "someone-else",
        entry.role,
        entry.action,
        entry.subject,
        entry.detail,
    )
    edit(engine, 5, actor="someone-else", hash=forged)
    assert found(verify(audit, home)) == {(5, "head_hash"), (6, "chain")}


def test_a_deleted_entry_leaves_a_gap(audit: AuditLog, home: Path, engine: Engine) -> None:
    fill(audit)
    sql(engine, "DELETE FROM audit_log WHERE seq = 5")
    report = verify(audit, home)
    assert found(report) == {(5, "gap"), (6, "chain"), (5, "head_entry")}
    messages = [p.message for p in report.problems]
    assert "entry 5 is missing: the log goes from entry 4 to entry 6 (deleted?)" in messages
    assert (
        "entry 6: prev_hash does not match the hash of entry 4, the entry before it "
        "(entries deleted, inserted or reordered?)" in messages
    )


def test_deleted_first_entries_are_named(audit: AuditLog, home: Path, engine: Engine) -> None:
    fill(audit)
    sql(engine, "DELETE FROM audit_log WHERE seq <= 3")
    sql(engine, "DELETE FROM audit_heads WHERE seq <= 3")
    report = verify(AuditLog(engine), home)
    assert report.problems[0] == Problem(
        1, "gap", "entries 1-3 are missing: the log starts at entry 4 (deleted?)"
    )
    assert (4, "chain") in found(report)


def test_swapped_entries_are_named(audit: AuditLog, home: Path, engine: Engine) -> None:
    fill(audit)
    columns = ("at", "actor", "role", "action", "subject", "detail", "prev_hash", "hash")
    third, seventh = (audit.entries(after_seq=seq - 1, limit=1)[0] for seq in (3, 7))
    edit(engine, 3, **{c: getattr(seventh, c) for c in columns})
    edit(engine, 7, **{c: getattr(third, c) for c in columns})
    problems = found(verify(audit, home))
    assert {(3, "hash"), (7, "hash"), (3, "chain"), (4, "chain")} <= problems


def test_a_renumbered_entry_is_named(audit: AuditLog, home: Path, engine: Engine) -> None:
    fill(audit, 3)
    sql(engine, "UPDATE audit_log SET seq = 0 WHERE seq = 1")
    problems = found(verify(audit, home))
    assert {(0, "seq"), (0, "hash"), (1, "head_entry")} <= problems


# -- truncation ----------------------------------------------------------------------------------


def test_truncation_with_heads_deleted_is_caught_by_the_anchor(
    engine: Engine, home: Path, audit: AuditLog
) -> None:
    fill(audit)
    sql(engine, "DELETE FROM audit_log WHERE seq > 7")
    sql(engine, "DELETE FROM audit_heads WHERE seq > 7")
    report = verify(audit, home)
    assert found(report) == {(8, "truncated"), (9, "truncated"), (10, "truncated")}
    assert report.problems[0].message == (
        "head 8 (anchor file audit-heads.jsonl line 8): the log was signed with 8 entries but "
        "now ends at entry 7 (entries deleted from the end?)"
    )
    # The database alone cannot tell: this is what the anchor file is for.
    assert verify(AuditLog(engine), home).ok


def test_truncation_with_heads_left_is_caught_by_the_database_head(
    engine: Engine, home: Path, audit: AuditLog
) -> None:
    fill(audit)
    sql(engine, "DELETE FROM audit_log WHERE seq > 7")
    report = verify(AuditLog(engine), home)
    assert found(report) == {(8, "truncated"), (9, "truncated"), (10, "truncated")}
    assert report.problems[-1].message == (
        "head 10 (database): the log was signed with 10 entries but now ends at entry 7 "
        "(entries deleted from the end?)"
    )
    with pytest.raises(AuditLogBroken, match="ends at entry 7 but a signed head names entry 10"):
        audit.append([event(99)], T0 + dt.timedelta(days=1))


def test_truncation_then_new_entries_is_caught_by_the_anchor(
    engine: Engine, home: Path, audit: AuditLog
) -> None:
    fill(audit)
    sql(engine, "DELETE FROM audit_log WHERE seq > 7")
    sql(engine, "DELETE FROM audit_heads WHERE seq > 7")
    AuditLog.for_home(engine, home).append([event(99)], T0 + dt.timedelta(days=1))
    assert (8, "head_hash") in found(verify(audit, home))


def test_everything_deleted_is_caught_by_the_anchor(
    engine: Engine, home: Path, audit: AuditLog
) -> None:
    fill(audit, 3)
    sql(engine, "DELETE FROM audit_log")
    sql(engine, "DELETE FROM audit_heads")
    report = verify(audit, home)
    assert report.problems[-1].message.endswith(
        "but now has no entries (entries deleted from the end?)"
    )


# -- tampering with heads, and keys --------------------------------------------------------------


def test_an_edited_head_hash_is_named(engine: Engine, home: Path, audit: AuditLog) -> None:
    fill(audit)
    sql(engine, "UPDATE audit_heads SET hash = :h WHERE seq = 6", h="f" * 64)
    assert found(verify(audit, home)) == {(6, "head_signature"), (6, "head_hash")}


def test_a_forged_head_signature_is_named(engine: Engine, home: Path, audit: AuditLog) -> None:
    fill(audit)
    head = audit.latest_head()
    assert head is not None
    forged = Ed25519PrivateKey.generate().sign(head_message(head.seq, head.hash, head.signed_at))
    sql(engine, "UPDATE audit_heads SET signature = :s WHERE seq = 10", s=forged.hex())
    report = verify(audit, home)
    assert report.problems[0] == Problem(
        10,
        "head_signature",
        f"head 10 (database): signature does not verify with key {head.key_id} "
        "(head forged or edited?)",
    )
    assert found(report) == {(10, "head_signature")}


def test_a_head_signed_by_another_key_is_named(engine: Engine, home: Path, audit: AuditLog) -> None:
    fill(audit, 3)
    head = audit.latest_head()
    assert head is not None
    mallory = Ed25519PrivateKey.generate()
    sig = civiscore.audit.signing.sign_head(mallory, 3, head.hash, head.signed_at)
    sql(
        engine,
        "UPDATE audit_heads SET key_id = :k, signature = :s WHERE seq = 3",
        k=key_id(mallory.public_key()),
        s=sig,
    )
    assert found(verify(audit, home)) == {(3, "head_key")}


def test_verifying_with_another_public_key_fails_and_says_why(audit: AuditLog, home: Path) -> None:
    fill(audit, 3)
    other = Ed25519PrivateKey.generate().public_key()
    report = audit.verify(other, None)
    assert found(report) == {(1, "head_key"), (2, "head_key"), (3, "head_key"), (1, "unsigned")}
    assert report.signed_through == 0
    # A key that signed before a key change is accepted when named.
    assert audit.verify(other, None, older_keys=[load_public_key(home)]).ok


def test_an_unsigned_log_is_not_vouched_for(engine: Engine, home: Path) -> None:
    log = AuditLog(engine)
    fill(log, 3)
    report = verify(log, home)
    assert report.problems == [
        Problem(
            1,
            "unsigned",
            "entries 1-3: not covered by any valid signed head (written without the signing "
            "key, or added to the database directly?)",
        )
    ]


# -- the anchor file -----------------------------------------------------------------------------


def test_anchor_lines_out_of_order_are_fine(audit: AuditLog, home: Path) -> None:
    fill(audit, 5)
    anchor = anchor_path(home)
    lines = anchor.read_text().splitlines(keepends=True)
    anchor.write_text("".join(reversed(lines)))
    report = verify(audit, home)
    assert report.ok and report.anchored_heads == 5


def test_a_damaged_or_missing_anchor_is_reported(audit: AuditLog, home: Path) -> None:
    fill(audit, 2)
    anchor = anchor_path(home)
    with anchor.open("a") as fh:
        fh.write("not json\n")
        fh.write('{"seq": 3, "half": "a line cut by a crash"')  # no newline: ignored
    report = verify(audit, home)
    assert report.problems == [
        Problem(
            None,
            "anchor",
            "anchor file audit-heads.jsonl line 3 is not a signed head "
            "(Expecting value: line 1 column 1 (char 0))",
        )
    ]
    anchor.unlink()
    anchor.mkdir()
    assert verify(audit, home).problems[0].message.startswith("anchor file ")
    assert "cannot be read: Is a directory" in verify(audit, home).problems[0].message
    anchor.rmdir()
    assert found(verify(audit, home)) == {(None, "anchor")}
    assert "not found, though the log has entries" in verify(audit, home).problems[0].message


# -- what may not be logged ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        resident_id(7),
        resident_id(7).lower() if resident_id(7).endswith("X") else resident_id(7),
        "110105194912310021",  # wrong check digit: still a raw ID's shape
        org_id(3),
        " 91350100M000100Y43 ",
    ],
)
def test_a_raw_id_subject_is_refused(raw: str) -> None:
    with pytest.raises(RawIdRefused, match="looks like a raw national ID; log the subject's"):
        AuditEvent("dept-1", "department", "record.submit", raw)
    with pytest.raises(RawIdRefused, match="actor"):
        AuditEvent(raw, "subject", "appeal.file")


@pytest.mark.parametrize(
    "detail",
    [
        {"id": "11010519491231002X"},
        {"rows": [{"note": "lookup of 11010519491231002x failed"}]},
        {"org": "91350100M000100Y43"},
        {"11010519491231002X": 1},
    ],
)
def test_a_raw_id_in_detail_is_refused(detail: dict[str, Any]) -> None:
    with pytest.raises(RawIdRefused, match="detail holds a raw national ID at"):
        AuditEvent("dept-1", "department", "record.submit", None, detail)


@pytest.mark.parametrize(
    "detail",
    [
        {"record_id": "202501010000000001"},  # no real birth date in it
        {"n": 115271376862786208},  # passes a credit code's check, as 1 in 31 numbers do
        {"ref": "R-115271376862786208"},
    ],
)
def test_record_numbers_in_detail_are_logged(detail: dict[str, Any]) -> None:
    AuditEvent("dept-1", "department", "record.submit", "a" * 32, detail)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": ""}, "actor is empty"),
        ({"action": "x" * 61}, "has 61 characters; the log keeps at most 60"),
        ({"role": "admin\x00"}, "control characters"),
        ({"detail": {"ratio": float("nan")}}, "cannot be stored as JSON"),
        ({"detail": {"text": "\ud800"}}, "cannot be stored as JSON"),
    ],
)
def test_bad_events_are_refused_with_the_reason(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"actor": "dept-1", "role": "department", "action": "x"} | kwargs
    with pytest.raises(ValueError, match=message):
        AuditEvent(**fields)


def test_detail_values_json_cannot_hold_are_logged_as_text(audit: AuditLog, home: Path) -> None:
    from decimal import Decimal

    audit.append([AuditEvent("a", "admin", "x", None, {"fine": Decimal("12.50"), "on": T0})], T0)
    assert audit.entries()[0].detail_data() == {"fine": "12.50", "on": "2025-03-01 09:00:00"}
    assert verify(audit, home).ok


# -- concurrency ---------------------------------------------------------------------------------


def _append_many(log: AuditLog, who: str, n: int, errors: list[BaseException]) -> None:
    try:
        for i in range(n):
            log.append([AuditEvent(who, "service", "check", None, {"i": i})], T0)
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


def test_two_threads_make_one_unbroken_chain(audit: AuditLog, home: Path) -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_append_many, args=(audit, who, 200, errors)) for who in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = verify(audit, home)
    assert report.ok and report.entries == 400 and report.signed_through == 400


def test_two_processes_make_one_unbroken_chain(
    ops_url: str, engine: Engine, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the in-process lock, only the database lock keeps the appenders apart, as it
    # would for two service processes; anchor lines may then land out of order.
    monkeypatch.setattr(civiscore.audit.log, "_APPEND_LOCK", contextlib.nullcontext())
    engines = [make_engine(ops_url) for _ in range(2)]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_append_many, args=(AuditLog.for_home(eng, home), who, 60, errors))
        for eng, who in zip(engines, "ab", strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for eng in engines:
        eng.dispose()
    assert errors == []
    report = verify(AuditLog.for_home(engine, home), home)
    assert report.ok and report.entries == 120 and report.anchored_heads == 120


def test_verify_while_appending_sees_one_consistent_state(audit: AuditLog, home: Path) -> None:
    # Entries, heads and the anchor are read as of one moment; otherwise a head committed
    # mid-verification would name an entry the entry scan never saw, and look like truncation.
    fill(audit, 5)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_appending() -> None:
        _append_many(audit, "svc", 1, errors)
        while not stop.is_set():
            _append_many(audit, "svc", 1, errors)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        reports = [audit.verify(load_public_key(home), page_size=3) for _ in range(15)]
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert [r.problems for r in reports if not r.ok] == []
    assert audit.count() > 5


# -- the signing key -----------------------------------------------------------------------------


def test_the_signing_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    home = tmp_path / "h"
    path, created = create_signing_key(home)
    assert created and path == home / "audit-signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public_key_path(home).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = path.read_bytes()
    assert create_signing_key(home) == (path, False)
    assert path.read_bytes() == before
    public = load_public_key(home)
    assert load_public_key(public_key_path(home)).public_bytes_raw() == public.public_bytes_raw()
    assert load_signing_key(home).public_key().public_bytes_raw() == public.public_bytes_raw()
    ident = key_id(public)
    assert len(ident) == 16 and int(ident, 16) >= 0


def test_a_lost_public_key_is_derived_again(tmp_path: Path) -> None:
    home = tmp_path / "h"
    create_signing_key(home)
    public = load_public_key(home).public_bytes_raw()
    public_key_path(home).unlink()
    assert create_signing_key(home)[1] is False
    assert load_public_key(home).public_bytes_raw() == public


def test_the_key_file_can_live_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secrets" / "audit.key"
    monkeypatch.setenv("CIVISCORE_AUDIT_KEY_FILE", str(secret))
    path, created = create_signing_key(tmp_path / "h")
    assert (path, created) == (secret, True)
    assert not (tmp_path / "h" / "audit-signing.key").exists()
    assert (tmp_path / "h" / "audit-signing.pub").exists()
    load_signing_key(tmp_path / "h")


def test_missing_and_bad_keys_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIVISCORE_AUDIT_KEY_FILE", raising=False)
    home = tmp_path / "h"
    with pytest.raises(SigningKeyMissing, match=r"audit-signing.key not found; run `civiscore"):
        load_signing_key(home)
    with pytest.raises(
        PublicKeyMissing, match=r"audit-signing.pub not found; run `civiscore init`"
    ):
        load_public_key(home / "audit-signing.pub")
    home.mkdir()
    (home / "audit-signing.key").write_text("not a key\n")
    with pytest.raises(BadKeyFile, match="is not an unencrypted PEM"):
        load_signing_key(home)
    other = tmp_path / "other"
    create_signing_key(other)
    (home / "audit-signing.key").unlink()
    create_signing_key(home)
    (home / "audit-signing.pub").write_bytes((other / "audit-signing.pub").read_bytes())
    with pytest.raises(BadKeyFile, match="does not belong to the signing key"):
        create_signing_key(home)


def test_doctests() -> None:
    for module in (civiscore.audit.log, civiscore.audit.signing):
        assert doctest.testmod(module).failed == 0


# -- property: any single change to any entry is found at or before it ---------------------------

MUTATIONS = (
    "at",
    "actor",
    "role",
    "action",
    "subject",
    "detail",
    "prev_hash",
    "hash",
    "seq",
    "delete",
    "swap",
)

events = st.builds(
    AuditEvent,
    actor=st.sampled_from(["transport", "courts", "svc-bank", "reviewer-1"]),
    role=st.sampled_from(ROLES),
    action=st.sampled_from(["record.submit", "check", "appeal.file", "rulebook.publish"]),
    subject=st.none() | st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    detail=st.dictionaries(
        st.text(max_size=5),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        max_size=3,
    ),
)


@dataclass(frozen=True)
class Mutation:
    seq: int
    kind: str


@st.composite
def logs_and_mutations(draw: st.DrawFn) -> tuple[list[list[AuditEvent]], Mutation]:
    batches = draw(st.lists(st.lists(events, min_size=1, max_size=3), min_size=1, max_size=5))
    n = sum(len(b) for b in batches)
    return batches, Mutation(draw(st.integers(1, n)), draw(st.sampled_from(MUTATIONS)))


def _mutate(engine: Engine, m: Mutation, n: int) -> None:
    with engine.begin() as conn:
        row = conn.execute(select(AuditEntry.__table__).where(AuditEntry.seq == m.seq)).one()
        if m.kind == "delete" or (m.kind == "swap" and n == 1):
            conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": m.seq})
        elif m.kind == "swap":
            other = m.seq + 1 if m.seq < n else m.seq - 1
            for old, new in ((m.seq, -1), (other, m.seq), (-1, other)):
                conn.execute(update(AuditEntry).where(AuditEntry.seq == old).values(seq=new))
        else:
            value: Any = {
                "at": row.at + dt.timedelta(seconds=1),
                "actor": row.actor + "~",
                "role": row.role + "~",
                "action": row.action + "~",
                "subject": "p" if row.subject is None else None,
                "detail": row.detail + " ",
                "prev_hash": "e" * 64 if row.prev_hash != "e" * 64 else "f" * 64,
                "hash": "e" * 64 if row.hash != "e" * 64 else "f" * 64,
                "seq": m.seq + 1000,
            }[m.kind]
            conn.execute(update(AuditEntry).where(AuditEntry.seq == m.seq).values({m.kind: value}))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=logs_and_mutations())
def test_any_single_change_is_found_at_or_before_it(
    case: tuple[list[list[AuditEvent]], Mutation], engine: Engine, home: Path
) -> None:
    batches, mutation = case
    sql(engine, "DELETE FROM audit_heads")
    sql(engine, "DELETE FROM audit_log")
    log = AuditLog(engine, load_signing_key(home))
    for i, batch in enumerate(batches):
        log.append(batch, T0 + dt.timedelta(minutes=i))
    public = load_public_key(home)
    assert log.verify(public).ok
    n = log.count()
    _mutate(engine, mutation, n)
    report = log.verify(public)
    assert not report.ok
    assert any(p.seq is not None and p.seq <= mutation.seq for p in report.problems), (
        mutation,
        report.problems,
    )
