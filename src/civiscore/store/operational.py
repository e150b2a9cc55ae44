"""Operational data of the service: keys, appeals, audit log, access log, listings as served.

Records live in the record store (DuckDB); what the *service* must remember — who may do what,
who asked about whom, which appeals are open, what was decided and the tamper-evident log of it —
lives here, in SQLAlchemy tables that run on the embedded default (SQLite, a file in the home)
or on PostgreSQL. The schema is created and upgraded by Alembic (``store/migrations``).

No raw national ID is stored here either: subjects appear as their keyed pseudonyms.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
AutoId = BigInteger().with_variant(Integer, "sqlite")

ROLES = ("department", "service", "subject", "reviewer", "auditor", "admin")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """One key per party. Only a SHA-256 of the key is kept: keys are 256-bit random tokens."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    department: Mapped[str | None] = mapped_column(String(100))
    services: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(String(64))  # pseudonym
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AuditEntry(Base):
    """An append-only, hash-chained log entry. ``hash`` covers ``prev_hash`` and the content."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_action_seq", "action", "seq"),
        Index("ix_audit_subject_seq", "subject", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str | None] = mapped_column(String(64))  # pseudonym, never a raw ID
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """A signed statement "the log had ``seq`` entries ending in ``hash``" (Ed25519)."""

    __tablename__ = "audit_heads"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[dt.datetime] = mapped_column(DateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class Access(Base):
    """Who checked a subject, when, for which service, with what answer."""

    __tablename__ = "access_log"
    __table_args__ = (Index("ix_access_subject_at", "subject", "at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    party: Mapped[str] = mapped_column(String(100))
    service: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(64))
    allowed: Mapped[bool] = mapped_column(Boolean)
    reason_code: Mapped[str | None] = mapped_column(String(100))


class AccessBatch(Base):
    """A slice of a batch check's accesses, committed packed before the answers are given, then
    moved into ``access_log`` (sorted by subject) by the recorder when it is idle.

    Inserting 100,000 rows into the subject index of ``access_log`` takes seconds; a few packed
    rows take milliseconds. Until a row is moved, readers find a subject's accesses here:
    ``subjects`` is ``size`` pseudonyms laid end to end (32 characters each), and ``picks`` one
    character per subject choosing its answer from ``answers`` (JSON ``[[allowed, code],
    ...]``, indexed from ``"0"``).
    """

    __tablename__ = "access_batches"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    party: Mapped[str] = mapped_column(String(100))
    service: Mapped[str] = mapped_column(String(60))
    size: Mapped[int] = mapped_column(Integer)
    subjects: Mapped[str] = mapped_column(Text)
    answers: Mapped[str] = mapped_column(Text)
    picks: Mapped[str] = mapped_column(Text)


class Appeal(Base):
    """A subject's contest of a record or a listing, and its outcome."""

    __tablename__ = "appeals"
    __table_args__ = (Index("ix_appeals_status_due", "status", "review_due"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(10))  # "record" or "listing"
    department: Mapped[str] = mapped_column(String(100))
    record_id: Mapped[str] = mapped_column(String(200))
    listing: Mapped[str | None] = mapped_column(String(100))
    statement: Mapped[str] = mapped_column(Text)
    filed_at: Mapped[dt.datetime] = mapped_column(DateTime)
    review_due: Mapped[dt.datetime] = mapped_column(DateTime)
    final_due: Mapped[dt.datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(12), default="open")
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    reviewer: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)


class AppealEvent(Base):
    """Every step of an appeal, for the subject and the reviewer to see."""

    __tablename__ = "appeal_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    appeal_id: Mapped[int] = mapped_column(ForeignKey("appeals.id"))
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(30))
    note: Mapped[str | None] = mapped_column(Text)


class ServedListing(Base):
    """Listings as the service answers from them, refreshed whenever records change."""

    __tablename__ = "served_listings"
    __table_args__ = (Index("ix_served_subject", "subject"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64))
    listing: Mapped[str] = mapped_column(String(100))
    list: Mapped[str] = mapped_column(String(10))
    since: Mapped[dt.datetime | None] = mapped_column(DateTime)
    until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    department: Mapped[str | None] = mapped_column(String(100))
    record_id: Mapped[str | None] = mapped_column(String(200))
    reference: Mapped[str | None] = mapped_column(String(200))
    refreshed_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Setting(Base):
    """Service-wide switches such as the stop switch; every change is also audited."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime)
    changed_by: Mapped[str] = mapped_column(String(100))


def default_url(home: Path) -> str:
    return f"sqlite:///{home / 'operational.db'}"


def make_engine(url: str) -> Engine:
    """An engine for the operational database; SQLite gets WAL and foreign keys."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine
