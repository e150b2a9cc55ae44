"""The access log: a batch's accesses are packed into one row and moved into the subject index
later; whatever has been moved, every subject's log and the counts are the same."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from civiscore.store import access, migrate
from civiscore.store.access import Accesses, AccessRow, AccessWriter
from civiscore.store.operational import AccessBatch, make_engine

SUBJECTS = [f"{i:x}" * 32 for i in range(1, 5)]  # four 32-character pseudonyms
CODES = [None, "listed:a", "listed:b"]
T0 = dt.datetime(2026, 3, 1, 9, 0)

answer = st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 2))
batch = st.lists(answer, min_size=1, max_size=2 * access.PACK_FROM)


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(batch, min_size=1, max_size=4), moves=st.integers(0, 40))
def test_packed_and_moved_accesses_read_the_same(
    batches: list[list[tuple[int, bool, int]]], moves: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(access, "MOVE_SLICE", 7)  # batches span several packed rows
        engine = make_engine(f"sqlite:///{Path(tmp) / 'ops.db'}")
        migrate.upgrade(engine)
        writer = AccessWriter()
        expected: dict[str, list[AccessRow]] = {s: [] for s in SUBJECTS}
        for n, b in enumerate(batches):
            at = T0 + dt.timedelta(minutes=n)
            a = Accesses(
                at,
                f"party{n}",
                "high_speed_rail",
                [SUBJECTS[s] for s, _, _ in b],
                [ok for _, ok, _ in b],
                [CODES[c] for _, _, c in b],
            )
            with engine.begin() as conn:
                writer.write(conn, a)
            for s, ok, c in b:
                expected[SUBJECTS[s]].append(
                    AccessRow(at, f"party{n}", "high_speed_rail", ok, CODES[c])
                )
        for _ in range(moves):
            with engine.begin() as conn:
                if not writer.move_slice(conn):
                    break
        with Session(engine) as session:
            for s in SUBJECTS:
                got = access.of_subject(session, s, 1000, 0)
                assert Counter(got) == Counter(expected[s])
                assert [r.at for r in got] == sorted((r.at for r in got), reverse=True)
                page = access.of_subject(session, s, 3, 2)
                assert page == got[2:5]
            rows = [r for rs in expected.values() for r in rs]
            assert access.counts(session) == (len(rows), sum(not r.allowed for r in rows))
        engine.dispose()


def test_moving_empties_the_packed_table_in_slices(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ops.db'}")
    migrate.upgrade(engine)
    writer = AccessWriter()
    n = access.MOVE_SLICE + 5
    with engine.begin() as conn:
        writer.write(
            conn, Accesses(T0, "rail", "high_speed_rail", [SUBJECTS[0]] * n, [True] * n, [None] * n)
        )
    with Session(engine) as session:
        assert session.scalars(select(AccessBatch.size)).all() == [access.MOVE_SLICE, 5]
    with engine.begin() as conn:
        assert writer.move_slice(conn) is True
    with Session(engine) as session:
        assert session.scalars(select(AccessBatch.size)).all() == [5]
        assert len(access.of_subject(session, SUBJECTS[0], 10_000, 0)) == n
    with engine.begin() as conn:
        assert writer.move_slice(conn) is True
        assert writer.move_slice(conn) is False
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(AccessBatch)) == 0
        assert len(access.of_subject(session, SUBJECTS[0], 10_000, 0)) == n
    engine.dispose()


def test_a_move_between_the_two_reads_is_not_seen_twice(tmp_path: Path) -> None:
    """The recorder moves packed rows while a subject reads their log: a move committed between
    the read of the packed rows and the read of the index must not show its accesses twice."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ops.db'}")
    migrate.upgrade(engine)
    writer = AccessWriter()
    n = access.PACK_FROM
    with engine.begin() as conn:
        denied = Accesses(T0, "rail", "high_speed_rail", [SUBJECTS[0]] * n, [False] * n, [None] * n)
        writer.write(conn, denied)
    read_packed = access._pending

    def then_move(session: Session, subject: str) -> tuple[list[AccessRow], list[int]]:
        found = read_packed(session, subject)
        with engine.begin() as conn:  # the recorder, on its own connection
            writer.move_slice(conn)
        return found

    with Session(engine) as session, pytest.MonkeyPatch.context() as mp:
        mp.setattr(access, "_pending", then_move)
        assert len(access.of_subject(session, SUBJECTS[0], 10_000, 0)) == n
    engine.dispose()
