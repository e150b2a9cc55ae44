"""The audit log: hash-chained entries, signed heads, an external anchor, and verification.

Every entry's ``hash`` covers the previous entry's hash and the entry's own content, so editing,
deleting, inserting or reordering entries breaks the chain somewhere a verifier can point at.
A chain alone does not stop someone with database access from cutting entries off the end, or
from rewriting the whole chain; two things do:

* **Signed heads.** Each append signs "the log had ``seq`` entries ending in ``hash``" with the
  Ed25519 key from :mod:`civiscore.audit.signing`, in the same transaction as the entries, so
  every committed entry is covered by a head. The private key is not in the database.
* **The anchor file.** Each signed head is also appended as one JSON line to a file outside the
  database (default ``<home>/audit-heads.jsonl``). Deleting the tail of the log *and* its heads
  from the database still leaves the anchor naming entries that no longer exist.

Verification needs only the public key (and the anchor file, if any), and streams through the
log in pages so it runs in constant memory however long the log grows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Select, func, insert, select, text
from sqlalchemy.engine import Engine

from civiscore.audit.signing import head_signature_valid, key_id, load_signing_key, sign_head
from civiscore.ids import is_resident_id, is_uscc
from civiscore.store.operational import AuditEntry, AuditHead
from civiscore.timeutil import to_local

GENESIS_HASH = "0" * 64
ANCHOR_FILE = "audit-heads.jsonl"
PAGE_SIZE = 10_000
MAX_PROBLEMS = 1_000

# Column sizes of audit_log: PostgreSQL enforces them and SQLite does not, so we check them
# ourselves and both databases refuse the same events.
_LIMITS = {"actor": 100, "role": 20, "action": 60, "subject": 64}

# The shapes of raw national IDs (GB 11643 resident IDs, GB 32100 credit codes). A subject or
# actor of this shape is refused even with a wrong check digit: a mistyped raw ID is still a
# raw ID.
_RESIDENT_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")
_USCC_SHAPE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")
_TOKEN18 = re.compile(r"(?<![0-9A-Za-z])[0-9A-Za-z]{18}(?![0-9A-Za-z])")

# One appender at a time in this process. The database lock taken inside the transaction is
# what keeps separate processes from forking the chain; this lock spares threads of one process
# from queueing on the database (SQLite would make them retry until its busy timeout) and keeps
# anchor lines in seq order.
_APPEND_LOCK = threading.Lock()
# Least time between two fsyncs of the anchor file (see _write_anchor).
ANCHOR_SYNC_SECONDS = 1.0

# The appender's statements, built once: every eligibility answer is logged, and building a
# statement costs more than running it.
_NEWEST = select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
# Three scalar subqueries in one SELECT: one round trip on the service's hot path.
_TAIL = select(
    _NEWEST.with_only_columns(AuditEntry.seq).scalar_subquery(),
    _NEWEST.with_only_columns(AuditEntry.hash).scalar_subquery(),
    select(func.max(AuditHead.seq)).scalar_subquery(),
)
_INSERT_ENTRY = insert(AuditEntry)
_INSERT_HEAD = insert(AuditHead)

# First key of the PostgreSQL advisory lock taken by appenders: "civi" as a 32-bit integer.
_PG_LOCK_CLASS = int.from_bytes(b"civi", "big")

_log = logging.getLogger(__name__)


class RawIdRefused(ValueError):
    """An audit event that would put a raw national ID into the log."""


class AuditLogBroken(RuntimeError):
    """The log is visibly damaged, so appending to it would bury the damage."""


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that hashes and signatures are computed over.

    Keys sorted, no spaces, UTF-8 rather than escapes; values JSON cannot hold (dates,
    decimals) become their ``str``. NaN and infinity are refused: they are not JSON.

    >>> canonical_json({"b": 1, "a": ["é", None]})
    '{"a":["é",null],"b":1}'
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
        allow_nan=False,
    )


def entry_hash(
    prev_hash: str,
    seq: int,
    at: dt.datetime,
    actor: str,
    role: str,
    action: str,
    subject: str | None,
    detail_json: str,
) -> str:
    """``sha256(prev_hash + "\\n" + canonical_json([seq, at, actor, role, action, subject,
    detail_json]))`` as hex.

    >>> entry_hash(GENESIS_HASH, 1, dt.datetime(2025, 1, 1), "a", "admin", "x", None, "{}")[:12]
    'fce2fd5a835a'
    """
    payload = canonical_json([seq, at.isoformat(), actor, role, action, subject, detail_json])
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


def anchor_path(home: Path) -> Path:
    """The default anchor file, ``<home>/audit-heads.jsonl``."""
    return home / ANCHOR_FILE


def looks_like_raw_id(value: str) -> bool:
    """Whether ``value`` has the shape of a resident ID or a unified social credit code.

    >>> looks_like_raw_id("11010519491231002x"), looks_like_raw_id("91350100M000100Y43")
    (True, True)
    >>> looks_like_raw_id("3f1c9a0d5e7b2c4a8f6e0d1b3a5c7e9f")
    False
    """
    cleaned = value.strip().upper()
    return bool(_RESIDENT_SHAPE.match(cleaned) or _USCC_SHAPE.match(cleaned))


def _raw_ids_in(value: Any, path: str) -> Iterator[str]:
    """Dotted paths in a detail value where a raw ID appears.

    Detail holds record numbers and references that may well be 18 characters long, so only
    what is very likely an ID counts here (see :func:`_contains_raw_id`), unlike the shape
    test applied to subjects and actors.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            label = str(key)
            if _contains_raw_id(label):
                label = "<raw ID>"  # the message must not repeat the ID it refuses
                yield (f"{path}." if path else "") + label + " (a key)"
            yield from _raw_ids_in(item, f"{path}.{label}" if path else label)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _raw_ids_in(item, f"{path}[{index}]")
    elif (
        isinstance(value, str | int)
        and not isinstance(value, bool)
        and _contains_raw_id(str(value))
    ):
        yield path


def _contains_raw_id(text_value: str) -> bool:
    """Whether free text holds an 18-character token that is very likely a raw ID.

    A resident ID must pass its check digit and carry a real birth date in 1900-2100; a credit
    code must pass its check character, have the code's structure and hold a letter. An
    all-digit credit code is let through: one random 18-digit number in 31 passes that check,
    and refusing record numbers at that rate would break logging. Their pseudonyms are what
    callers should log anyway.

    >>> _contains_raw_id("lookup of 11010519491231002x failed")
    True
    >>> _contains_raw_id("R-202501010000000001")
    False
    """
    for token in _TOKEN18.findall(text_value):
        upper = token.upper()
        if is_resident_id(upper) and 1900 <= int(upper[6:10]) <= 2100:
            return True
        if not upper.isdigit() and _USCC_SHAPE.match(upper) and is_uscc(upper):
            return True
    return False


def _check_name(name: str, value: Any, *, required: bool = True) -> None:
    if not isinstance(value, str):
        raise TypeError(f"audit event {name} must be a str, not {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"audit event {name} is empty; say who or what it is")
    if len(value) > _LIMITS[name]:
        raise ValueError(
            f"audit event {name} {value[:20]!r}... has {len(value)} characters; "
            f"the log keeps at most {_LIMITS[name]}"
        )
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"audit event {name} {value!r} contains control characters")


@dataclass(frozen=True)
class AuditEvent:
    """Something to be logged: who (``actor`` in ``role``) did what (``action``) to whom.

    Args:
        actor: The party that acted, e.g. an API key's name.
        role: The actor's role (``department``, ``reviewer``, ``admin``...).
        action: What happened, e.g. ``record.submit`` or ``check``.
        subject: The subject's pseudonym, or None. Never a raw ID: one is refused.
        detail: JSON-serialisable facts about the action; stored as canonical JSON.

    Raises:
        RawIdRefused: subject or actor has the shape of a raw ID, or detail holds a valid one.
        ValueError: a field is empty, too long for its column, or detail is not JSON.
    """

    actor: str
    role: str
    action: str
    subject: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("actor", self.actor)
        _check_name("role", self.role)
        _check_name("action", self.action)
        if self.subject is not None:
            _check_name("subject", self.subject)
            if looks_like_raw_id(self.subject):
                raise RawIdRefused(
                    f"audit event subject {self.subject[:4]}... looks like a raw national ID; "
                    "log the subject's pseudonym (civiscore.ids.pseudonym) instead"
                )
        if looks_like_raw_id(self.actor):
            raise RawIdRefused(
                f"audit event actor {self.actor[:4]}... looks like a raw national ID; "
                "name the actor by its API key name or pseudonym"
            )
        if not isinstance(self.detail, Mapping):
            raise TypeError(
                f"audit event detail must be a mapping, not {type(self.detail).__name__}"
            )
        found = list(_raw_ids_in(self.detail, ""))
        if found:
            raise RawIdRefused(
                f"audit event detail holds a raw national ID at {', '.join(found)}; "
                "log the pseudonym instead"
            )
        self.detail_json()  # refuse what cannot be logged now, not at append time

    def detail_json(self) -> str:
        """``detail`` as canonical JSON, as it is stored and hashed."""
        try:
            text_value = canonical_json(dict(self.detail))
            text_value.encode()  # lone surrogates pass json.dumps but not UTF-8
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"audit event detail cannot be stored as JSON: {exc}; use string keys and "
                "JSON values (str, int, float, bool, None, lists, mappings)"
            ) from exc
        return text_value


@dataclass(frozen=True)
class AuditRecord:
    """An entry as stored in the log; ``detail`` is the canonical JSON text that was hashed."""

    seq: int
    at: dt.datetime
    actor: str
    role: str
    action: str
    subject: str | None
    detail: str
    prev_hash: str
    hash: str

    def detail_data(self) -> dict[str, Any]:
        """``detail`` parsed from its canonical JSON text."""
        parsed: dict[str, Any] = json.loads(self.detail)
        return parsed

    def computed_hash(self) -> str:
        """What ``hash`` must be, given ``prev_hash`` and the content."""
        return entry_hash(
            self.prev_hash,
            self.seq,
            self.at,
            self.actor,
            self.role,
            self.action,
            self.subject,
            self.detail,
        )


@dataclass(frozen=True)
class SignedHead:
    """A signed statement: "the log had entries 1..``seq``, the last with hash ``hash``"."""

    seq: int
    hash: str
    signed_at: dt.datetime
    key_id: str
    signature: str

    def to_json(self) -> str:
        """One anchor-file line (without the newline)."""
        return canonical_json(
            {
                "seq": self.seq,
                "hash": self.hash,
                "signed_at": self.signed_at.isoformat(),
                "key_id": self.key_id,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> SignedHead:
        """Read an anchor-file line; raises ValueError naming what is wrong."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = {"seq", "hash", "signed_at", "key_id", "signature"} - set(data)
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        seq, chain_hash = data["seq"], data["hash"]
        key, signature, signed_at = data["key_id"], data["signature"], data["signed_at"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ValueError("seq is not an integer")
        if not all(isinstance(v, str) for v in (chain_hash, key, signature, signed_at)):
            raise ValueError("hash, signed_at, key_id and signature must be strings")
        return cls(seq, chain_hash, dt.datetime.fromisoformat(signed_at), key, signature)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log. ``seq`` is where it shows, or None (e.g. the anchor)."""

    seq: int | None
    kind: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` found.

    Attributes:
        ok: No problem at all.
        entries: Entries read.
        heads: Signed heads read from the database.
        anchored_heads: Signed heads read from the anchor file.
        signed_through: The highest seq covered by a head with a good signature and a hash
            that matches the log; entries after it are not vouched for.
        problems: The problems, in the order found (at most ``max_problems`` of them).
        problems_total: How many problems there were, listed or not.
    """

    ok: bool
    entries: int
    heads: int
    anchored_heads: int
    signed_through: int
    problems: list[Problem]
    problems_total: int

    def summary(self) -> str:
        """One line for a terminal or a log."""
        counts = f"{self.entries} entries, {self.heads} signed heads" + (
            f", {self.anchored_heads} anchored" if self.anchored_heads else ""
        )
        if self.ok:
            return f"audit log intact: {counts}, all signed through entry {self.signed_through}"
        return f"audit log damaged: {self.problems_total} problems in {counts}"


_ENTRY_COLUMNS = (
    AuditEntry.seq,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.role,
    AuditEntry.action,
    AuditEntry.subject,
    AuditEntry.detail,
    AuditEntry.prev_hash,
    AuditEntry.hash,
)
_HEAD_COLUMNS = (
    AuditHead.seq,
    AuditHead.hash,
    AuditHead.signed_at,
    AuditHead.key_id,
    AuditHead.signature,
)


class AppendTransaction:
    """An open append transaction (see :meth:`AuditLog.appending`)."""

    def __init__(self, log: AuditLog, conn: Connection):
        self.log, self.conn = log, conn
        self.head: SignedHead | None = None

    def append(self, entries: Sequence[AuditEvent], at: dt.datetime) -> list[int]:
        """Append events, all at time ``at``; returns their seqs."""
        if not entries:
            return []
        seqs, head = self.log._append_rows(self.conn, entries, at)
        if head is not None:
            self.head = head
        return seqs


class AuditLog:
    """The tamper-evident audit log in the operational database.

    Args:
        engine: The operational database (schema made by ``civiscore.store.migrate.upgrade``).
        signing_key: Signs a head after every append. Without it entries are chained but not
            signed, and :meth:`verify` will say so.
        anchor_file: Where signed heads are also written, one JSON line each; also the anchor
            :meth:`verify` checks by default. None for no anchor.
    """

    def __init__(
        self,
        engine: Engine,
        signing_key: Ed25519PrivateKey | None = None,
        anchor_file: Path | None = None,
    ) -> None:
        self.engine = engine
        self.anchor_file = anchor_file
        self._anchor_synced = float("-inf")
        self._signing_key = signing_key
        self._key_id = key_id(signing_key.public_key()) if signing_key is not None else None

    @classmethod
    def for_home(cls, engine: Engine, home: Path) -> AuditLog:
        """The log as the service writes it: the home's signing key and anchor file.

        Raises:
            SigningKeyMissing: the home has no signing key (run ``civiscore init``).
        """
        return cls(engine, load_signing_key(home), anchor_path(home))

    # -- writing ---------------------------------------------------------------------------

    def append(self, entries: Sequence[AuditEvent], at: dt.datetime) -> list[int]:
        """Append events, all at time ``at``, in one transaction; returns their seqs.

        With a signing key, a head for the last new entry is signed and stored in the same
        transaction, then written to the anchor file after the commit (a head that was never
        committed must not be anchored: verification would take it for a truncation).

        Raises:
            AuditLogBroken: a signed head names an entry beyond the end of the log (entries
                were deleted); run :meth:`verify`.
        """
        if not entries:
            return []
        with self.appending() as tx:
            return tx.append(entries, at)

    @contextlib.contextmanager
    def appending(self) -> Iterator[AppendTransaction]:
        """One transaction holding the append lock, for appends and for other writes that
        must commit with them (the recorder's access rows, on ``.conn``). Signed heads reach
        the anchor file after the commit and before the lock is released, so anchor lines
        stay in seq order and never name an entry that was rolled back."""
        with _APPEND_LOCK:
            with self.engine.begin() as conn:
                self._lock_for_append(conn)
                tx = AppendTransaction(self, conn)
                yield tx
            if tx.head is not None and self.anchor_file is not None:
                self._write_anchor(tx.head)

    def _append_rows(
        self, conn: Connection, entries: Sequence[AuditEvent], at: dt.datetime
    ) -> tuple[list[int], SignedHead | None]:
        moment = to_local(at)
        details = [event.detail_json() for event in entries]
        head: SignedHead | None = None
        seq, prev = self._tail(conn)
        rows: list[dict[str, Any]] = []
        for event, detail in zip(entries, details, strict=True):
            seq += 1
            digest = entry_hash(
                prev,
                seq,
                moment,
                event.actor,
                event.role,
                event.action,
                event.subject,
                detail,
            )
            rows.append(
                {
                    "seq": seq,
                    "at": moment,
                    "actor": event.actor,
                    "role": event.role,
                    "action": event.action,
                    "subject": event.subject,
                    "detail": detail,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        conn.execute(_INSERT_ENTRY, rows)
        if self._signing_key is not None and self._key_id is not None:
            signature = sign_head(self._signing_key, seq, prev, moment)
            head = SignedHead(seq, prev, moment, self._key_id, signature)
            conn.execute(
                _INSERT_HEAD,
                {
                    "seq": head.seq,
                    "hash": head.hash,
                    "signed_at": head.signed_at,
                    "key_id": head.key_id,
                    "signature": head.signature,
                },
            )
        return [row["seq"] for row in rows], head

    def _lock_for_append(self, conn: Connection) -> None:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            # Take SQLite's write lock before reading the last entry, so no other connection
            # can append between our read and our insert (the driver would only lock at the
            # first INSERT).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            # An advisory lock rather than LOCK TABLE: it needs no UPDATE or DELETE grant, so
            # the service's role can be limited to INSERT and SELECT on the audit tables. Keyed
            # by the table's OID, it only serialises appenders of this schema's log; readers
            # (the auditor API, verify) are never blocked.
            conn.execute(
                text(
                    f"SELECT pg_advisory_xact_lock({_PG_LOCK_CLASS}, "
                    f"'{AuditEntry.__tablename__}'::regclass::oid::int)"
                )
            )
        else:
            # Elsewhere, lock the last row; the primary key on seq still refuses a fork.
            conn.execute(
                select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1).with_for_update()
            )

    def _tail(self, conn: Connection) -> tuple[int, str]:
        """The last entry's seq and hash, after checking that no signed head lies beyond it.

        Raises:
            AuditLogBroken: entries were cut from the end. A new entry would take the seq of a
                deleted one and its head would collide with the old head; say so rather than
                fail on a primary key.
        """
        last_seq, last_hash, top = conn.execute(_TAIL).one()
        seq = int(last_seq) if last_seq is not None else 0
        if top is not None and top > seq:
            raise AuditLogBroken(
                f"the audit log ends at entry {seq} but a signed head names entry {top}: "
                "entries were deleted from the end. Nothing was appended; run the audit "
                "verification and restore the log from backup"
            )
        return seq, str(last_hash) if last_hash is not None else GENESIS_HASH

    def _write_anchor(self, head: SignedHead) -> None:
        assert self.anchor_file is not None
        try:
            self.anchor_file.parent.mkdir(parents=True, exist_ok=True)
            with self.anchor_file.open("a", encoding="utf-8") as fh:
                fh.write(head.to_json() + "\n")
                fh.flush()
                # At most one fsync a second: the line is in the page cache already, safe from
                # anyone editing the database, and a crash that loses the newest lines only
                # makes the anchor lag, which verification tolerates. An fsync per head put
                # a second disk flush on every eligibility answer.
                now = time.monotonic()
                if now - self._anchor_synced >= ANCHOR_SYNC_SECONDS:
                    os.fsync(fh.fileno())
                    self._anchor_synced = now
        except OSError:
            # The entries are committed; failing the caller now would make it believe the
            # action was not logged. The anchor just lags, which verification tolerates.
            _log.exception(
                "audit head %s committed but not written to the anchor file %s",
                head.seq,
                self.anchor_file,
            )

    # -- reading ---------------------------------------------------------------------------

    def entries(
        self,
        after_seq: int = 0,
        limit: int = 100,
        action: str | None = None,
        subject: str | None = None,
    ) -> list[AuditRecord]:
        """Entries with seq greater than ``after_seq``, oldest first, optionally filtered.

        Page through the log by passing the last seq of one page as ``after_seq`` of the next.

        Raises:
            ValueError: ``limit`` is not between 1 and 10,000.
        """
        if not 1 <= limit <= PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {PAGE_SIZE}, not {limit}")
        query = select(*_ENTRY_COLUMNS).where(AuditEntry.seq > after_seq)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(AuditEntry.seq).limit(limit)).all()
        return [AuditRecord(*row) for row in rows]

    def latest_head(self) -> SignedHead | None:
        """The signed head with the highest seq, or None before the first signed append."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_HEAD_COLUMNS).order_by(AuditHead.seq.desc()).limit(1)
            ).first()
        return SignedHead(*row) if row is not None else None

    def count(self) -> int:
        """How many entries the log holds."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one())

    # -- verifying -------------------------------------------------------------------------

    def verify(
        self,
        public_key: Ed25519PublicKey,
        anchor_file: Path | None = None,
        *,
        older_keys: Sequence[Ed25519PublicKey] = (),
        page_size: int = PAGE_SIZE,
        max_problems: int = MAX_PROBLEMS,
    ) -> VerifyReport:
        """Check the whole log: chain, seq numbering, heads, signatures and the anchor.

        Args:
            public_key: The key heads must be signed with.
            anchor_file: The anchor to check against; by default this log's own, if any.
            older_keys: Keys that signed earlier heads, before a key change.
            page_size: Entries (and heads) read per query.
            max_problems: Problems listed at most; all are counted.

        Returns:
            The report; ``ok`` is True only when nothing at all is wrong.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        anchor = anchor_file if anchor_file is not None else self.anchor_file
        # Measure the anchor before the database snapshot is taken: lines written after this
        # moment may name heads committed after the snapshot, which would look truncated.
        anchor_size = anchor.stat().st_size if anchor is not None and anchor.exists() else None
        checker = _Checker({key_id(k): k for k in (public_key, *older_keys)}, max_problems)
        with self.engine.connect() as base:
            conn = self._snapshot(base)
            heads = _Heads(_db_heads(conn, page_size))
            sources = [heads]
            anchored: _Heads | None = None
            if anchor is not None and anchor_size is not None:
                anchored = _Heads(_anchor_heads(anchor, anchor_size, checker))
                sources.append(anchored)
            last_seq = 0
            for record in _db_entries(conn, page_size):
                checker.entry(record)
                last_seq = record.seq
                for source in sources:
                    for head, where in source.upto(record.seq):
                        if head.seq == record.seq:
                            checker.head(head, where, record.hash, last_seq)
                        else:  # a gap, or an anchor line out of order
                            checker.head(head, where, _hash_at(conn, head.seq), last_seq)
            for source in sources:
                for head, where in source.rest():
                    stored = _hash_at(conn, head.seq) if head.seq <= last_seq else None
                    checker.head(head, where, stored, last_seq)
            if anchor is not None and anchor_size is None and (checker.entries or heads.count):
                checker.add(
                    None,
                    "anchor",
                    f"anchor file {anchor} not found, though the log has entries; it was "
                    "deleted or moved, or this log was written without it",
                )
            conn.rollback()
        return checker.report(heads.count, anchored.count if anchored else 0)

    def _snapshot(self, conn: Connection) -> Connection:
        # Entries, heads and point lookups must all see one state of the database, or an
        # append committed mid-verification would look like a truncation.
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # the driver would not open a read transaction
        return conn


def _hash_at(conn: Connection, seq: int) -> str | None:
    return conn.execute(select(AuditEntry.hash).where(AuditEntry.seq == seq)).scalar()


def _paged(
    conn: Connection, query: Select[*tuple[Any, ...]], key: Any, page_size: int
) -> Iterator[Any]:
    # Keyset paging with no lower bound at first, so rows renumbered to 0 or below are seen.
    after: int | None = None
    while True:
        page_query = query if after is None else query.where(key > after)
        rows = conn.execute(page_query.order_by(key).limit(page_size)).all()
        yield from rows
        if len(rows) < page_size:
            return
        after = rows[-1][0]


def _db_entries(conn: Connection, page_size: int) -> Iterator[AuditRecord]:
    for row in _paged(conn, select(*_ENTRY_COLUMNS), AuditEntry.seq, page_size):
        yield AuditRecord(*row)


def _db_heads(conn: Connection, page_size: int) -> Iterator[tuple[SignedHead, str]]:
    for row in _paged(conn, select(*_HEAD_COLUMNS), AuditHead.seq, page_size):
        yield SignedHead(*row), "database"


def _anchor_heads(path: Path, size: int, checker: _Checker) -> Iterator[tuple[SignedHead, str]]:
    consumed = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        checker.add(None, "anchor", f"anchor file {path} cannot be read: {exc.strerror}")
        return
    with fh:
        for number, raw in enumerate(fh, start=1):
            consumed += len(raw)
            if consumed > size or not raw.endswith(b"\n"):
                # Written after verification began, or cut short by a crash mid-write: either
                # way not a head this verification can hold the database to.
                return
            where = f"anchor file {path.name} line {number}"
            try:
                head = SignedHead.from_json(raw.decode())
            except (ValueError, UnicodeDecodeError) as exc:
                checker.add(None, "anchor", f"{where} is not a signed head ({exc})")
                continue
            yield head, where


class _Heads:
    """A stream of heads in (mostly) seq order that the entry stream pulls from."""

    def __init__(self, heads: Iterator[tuple[SignedHead, str]]) -> None:
        self._heads = heads
        self._next = next(heads, None)
        self.count = 0

    def upto(self, seq: int) -> Iterator[tuple[SignedHead, str]]:
        while self._next is not None and self._next[0].seq <= seq:
            item = self._next
            self._next = next(self._heads, None)
            self.count += 1
            yield item

    def rest(self) -> Iterator[tuple[SignedHead, str]]:
        while self._next is not None:
            item = self._next
            self._next = next(self._heads, None)
            self.count += 1
            yield item


class _Checker:
    """The verification state: where the chain is, what is signed, what is wrong."""

    def __init__(self, trusted: dict[str, Ed25519PublicKey], max_problems: int) -> None:
        self.trusted = trusted
        self.max_problems = max_problems
        self.problems: list[Problem] = []
        self.total = 0
        self.entries = 0
        self.expected_seq = 1
        self.prev_seq: int | None = None
        self.prev_hash = GENESIS_HASH
        self.last_seq = 0
        self.signed_through = 0
        self._last_checked: tuple[SignedHead, bool] | None = None

    def add(self, seq: int | None, kind: str, message: str) -> None:
        self.total += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(seq, kind, message))

    def entry(self, record: AuditRecord) -> None:
        self.entries += 1
        seq = record.seq
        if seq < self.expected_seq and self.prev_seq is None:
            self.add(seq, "seq", f"entry {seq}: numbering starts at 1 (renumbered or inserted?)")
        elif seq > self.expected_seq:
            self.add(self.expected_seq, "gap", _gap_message(self.expected_seq, seq))
        if record.prev_hash != self.prev_hash:
            before = (
                f"the hash of entry {self.prev_seq}, the entry before it"
                if self.prev_seq is not None
                else "the genesis value 000…"
            )
            self.add(
                seq,
                "chain",
                f"entry {seq}: prev_hash does not match {before} "
                "(entries deleted, inserted or reordered?)",
            )
        if record.computed_hash() != record.hash:
            self.add(seq, "hash", f"entry {seq}: hash does not match its content (edited?)")
        self.prev_seq = seq
        self.prev_hash = record.hash
        self.expected_seq = max(self.expected_seq, seq + 1)
        self.last_seq = seq

    def head(self, head: SignedHead, where: str, stored_hash: str | None, last_seq: int) -> None:
        seq = head.seq
        public = self.trusted.get(head.key_id)
        if public is None:
            self.add(
                seq,
                "head_key",
                f"head {seq} ({where}): signed by unknown key {head.key_id}, not by "
                f"{', '.join(self.trusted)}; verify with that key's public file if it was the "
                "service's key before a key change, else the head is forged",
            )
            good_signature = False
        else:
            good_signature = self._signature_valid(public, head)
            if not good_signature:
                self.add(
                    seq,
                    "head_signature",
                    f"head {seq} ({where}): signature does not verify with key {head.key_id} "
                    "(head forged or edited?)",
                )
        if stored_hash is None:
            if seq > last_seq:
                ends = f"ends at entry {last_seq}" if last_seq else "has no entries"
                self.add(
                    seq,
                    "truncated",
                    f"head {seq} ({where}): the log was signed with {seq} entries but now "
                    f"{ends} (entries deleted from the end?)",
                )
            else:
                self.add(
                    seq, "head_entry", f"head {seq} ({where}): entry {seq} is missing (deleted?)"
                )
        elif stored_hash != head.hash:
            self.add(
                seq,
                "head_hash",
                f"head {seq} ({where}): signed hash {head.hash[:12]}… differs from entry "
                f"{seq}'s hash {stored_hash[:12]}… (entry or head edited?)",
            )
        elif good_signature:
            self.signed_through = max(self.signed_through, seq)

    def _signature_valid(self, public: Ed25519PublicKey, head: SignedHead) -> bool:
        # The database and the anchor file hold the same heads, checked side by side; an
        # Ed25519 check costs ~0.1 ms, so check each distinct head once.
        if self._last_checked is not None and self._last_checked[0] == head:
            return self._last_checked[1]
        valid = head_signature_valid(public, head.seq, head.hash, head.signed_at, head.signature)
        self._last_checked = (head, valid)
        return valid

    def report(self, heads: int, anchored: int) -> VerifyReport:
        if self.last_seq > self.signed_through:
            first = self.signed_through + 1
            span = (
                f"entry {first}" if first == self.last_seq else f"entries {first}-{self.last_seq}"
            )
            self.add(
                first,
                "unsigned",
                f"{span}: not covered by any valid signed head (written without the signing "
                "key, or added to the database directly?)",
            )
        return VerifyReport(
            ok=self.total == 0,
            entries=self.entries,
            heads=heads,
            anchored_heads=anchored,
            signed_through=self.signed_through,
            problems=self.problems,
            problems_total=self.total,
        )


def _gap_message(expected: int, found: int) -> str:
    missing = (
        f"entry {expected} is" if found == expected + 1 else f"entries {expected}-{found - 1} are"
    )
    if expected == 1:
        return f"{missing} missing: the log starts at entry {found} (deleted?)"
    return f"{missing} missing: the log goes from entry {expected - 1} to entry {found} (deleted?)"
