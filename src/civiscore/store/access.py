"""The access log: who checked a subject, when, for which service, with what answer.

Every answer is committed here before it is given. A single check is one row of
``access_log``. A batch check is one packed row of ``access_batches`` (see
:class:`~civiscore.store.operational.AccessBatch`), which the recorder later moves into
``access_log``, sorted by subject, one row (one slice of the batch) at a time when no request is
waiting. Readers see both, so a subject's log is complete from the moment the answer was given.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.orm import Session

from civiscore.ids import PSEUDONYM_HEX_CHARS
from civiscore.store.operational import Access, AccessBatch

W = PSEUDONYM_HEX_CHARS
# A batch this large or larger is packed; smaller ones are written row by row.
PACK_FROM = 32
# Subjects per packed row, and so per move: small enough that a check arriving meanwhile waits
# a few milliseconds, not the seconds a 100,000-row move would take.
MOVE_SLICE = 500
# answers[k] is picked by chr(_PICK0 + k); "0" keeps the column printable.
_PICK0 = ord("0")


@dataclass
class Accesses:
    """The answers one request gave, all by one party for one service at one time."""

    at: dt.datetime
    party: str
    service: str
    subjects: Sequence[str]
    allowed: Sequence[bool]
    reason_codes: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.subjects)


@dataclass(frozen=True)
class AccessRow:
    """One access as a subject sees it."""

    at: dt.datetime
    party: str
    service: str
    allowed: bool
    reason_code: str | None


class AccessWriter:
    """Writes :class:`Accesses` inside a caller's transaction."""

    def __init__(self) -> None:
        self._insert_sql: str | None = None

    def write(self, conn: Connection, a: Accesses) -> None:
        if len(a) >= PACK_FROM:
            self._pack(conn, a)
        elif len(a):
            self._rows(conn, a.at, a.party, a.service, a.subjects, a.allowed, a.reason_codes)

    def _pack(self, conn: Connection, a: Accesses) -> None:
        pairs = list(zip(a.allowed, a.reason_codes, strict=True))
        answers = sorted(set(pairs), key=lambda p: (p[0], p[1] or ""))
        pick = {p: chr(_PICK0 + k) for k, p in enumerate(answers)}
        subjects = "".join(a.subjects)
        if len(subjects) != W * len(a):
            raise ValueError(f"pseudonyms must have {W} characters to be packed")
        picks = "".join(map(pick.__getitem__, pairs))
        encoded = json.dumps([list(p) for p in answers])
        conn.execute(
            insert(AccessBatch),
            [
                {
                    "at": a.at,
                    "party": a.party,
                    "service": a.service,
                    "size": len(picks[i : i + MOVE_SLICE]),
                    "subjects": subjects[i * W : (i + MOVE_SLICE) * W],
                    "answers": encoded,
                    "picks": picks[i : i + MOVE_SLICE],
                }
                for i in range(0, len(a), MOVE_SLICE)
            ],
        )

    def _rows(
        self,
        conn: Connection,
        at: dt.datetime,
        party: str,
        service: str,
        subjects: Sequence[str],
        allowed: Sequence[bool],
        codes: Sequence[str | None],
    ) -> None:
        # The driver's executemany over plain tuples, `at` bound once the way SQLAlchemy
        # stores a DateTime: building and binding a dict per row through SQLAlchemy cost
        # more than deciding them.
        if self._insert_sql is None:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            columns = ("at", "party", "service", "subject", "allowed", "reason_code")
            self._insert_sql = (
                f"INSERT INTO {Access.__tablename__} ({', '.join(columns)}) "
                f"VALUES ({', '.join([mark] * len(columns))})"
            )
        bind = Access.__table__.c.at.type.bind_processor(conn.dialect)
        stored_at = bind(at) if bind is not None else at
        n = len(subjects)
        rows = list(
            zip([stored_at] * n, [party] * n, [service] * n, subjects, allowed, codes, strict=True)
        )
        conn.exec_driver_sql(self._insert_sql, rows)

    def move_slice(self, conn: Connection) -> bool:
        """Move the oldest packed row into ``access_log``; False when none is left."""
        table = AccessBatch.__table__
        b = conn.execute(select(table).order_by(table.c.id).limit(1)).first()
        if b is None:
            return False
        answers = [(bool(a), c) for a, c in json.loads(b.answers)]
        part = sorted((b.subjects[i * W : (i + 1) * W], b.picks[i]) for i in range(b.size))
        chosen = [answers[ord(p) - _PICK0] for _, p in part]
        self._rows(
            conn,
            b.at,
            b.party,
            b.service,
            [s for s, _ in part],
            [a for a, _ in chosen],
            [c for _, c in chosen],
        )
        conn.execute(delete(AccessBatch).where(AccessBatch.id == b.id))
        return True


def pending(session: Session, subject: str) -> list[AccessRow]:
    """A subject's accesses still packed in ``access_batches``."""
    return _pending(session, subject)[0]


def _pending(session: Session, subject: str) -> tuple[list[AccessRow], list[int]]:
    """:func:`pending`, and the packed rows it read them from."""
    out: list[AccessRow] = []
    rows = list(
        session.scalars(
            select(AccessBatch).where(AccessBatch.subjects.contains(subject, autoescape=True))
        )
    )
    for b in rows:
        answers = json.loads(b.answers)
        at = b.subjects.find(subject)
        while at >= 0:
            if at % W == 0:  # a whole pseudonym, not the end of one and the start of the next
                allowed, code = answers[ord(b.picks[at // W]) - _PICK0]
                out.append(AccessRow(b.at, b.party, b.service, bool(allowed), code))
            at = b.subjects.find(subject, at + 1)
    return out, [b.id for b in rows]


# Reads of the packed rows and of the index retried when a move came in between (see
# :func:`_unmoved`); the recorder moves one slice at a time, so a retry rarely meets another.
_TRIES = 20


def _unmoved(session: Session, read: list[int]) -> bool:
    """Whether the packed rows ``read`` are all still packed.

    The recorder moves a packed row into ``access_log`` and deletes it in one transaction, but
    two reads outside one snapshot (SQLite's driver starts none for a SELECT) can fall on either
    side of it and see the same accesses twice. The packed rows read first all still there
    after the read of ``access_log`` means none of them had been moved before it.
    """
    left = set(session.scalars(select(AccessBatch.id).where(AccessBatch.id.in_(read))))
    return left == set(read)


def of_subject(session: Session, subject: str, limit: int, offset: int) -> list[AccessRow]:
    """A subject's accesses, newest first (packed ones included)."""
    for _ in range(_TRIES):
        waiting, read = _pending(session, subject)
        stored = session.execute(
            select(Access.at, Access.party, Access.service, Access.allowed, Access.reason_code)
            .where(Access.subject == subject)
            .order_by(Access.at.desc(), Access.id.desc())
            .limit(limit + offset + len(waiting))
        ).all()
        if _unmoved(session, read):
            break
    rows = [AccessRow(*r) for r in stored]
    # Packed accesses will get ids above every stored one: among equal times they are newer.
    merged = sorted(
        [(r.at, 1, -i, r) for i, r in enumerate(waiting)]
        + [(r.at, 0, -i, r) for i, r in enumerate(rows)],
        key=lambda t: (t[0], t[1], t[2]),
        reverse=True,
    )
    return [t[3] for t in merged][offset : offset + limit]


def counts(session: Session) -> tuple[int, int]:
    """All accesses and the denied ones, packed ones included."""
    for _ in range(_TRIES):
        batches = list(session.scalars(select(AccessBatch)))
        checks = session.scalar(select(func.count()).select_from(Access)) or 0
        denied = (
            session.scalar(
                select(func.count()).select_from(Access).where(Access.allowed.is_(False))
            )
            or 0
        )
        for b in batches:
            answers = json.loads(b.answers)
            checks += b.size
            denied += sum(
                b.picks.count(chr(_PICK0 + k)) for k, (a, _) in enumerate(answers) if not a
            )
        if _unmoved(session, [b.id for b in batches]):
            break
    return checks, denied
