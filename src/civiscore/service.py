"""The scheme as a service: every party's operations, with their scope checked and logged.

The HTTP API (``civiscore.api``) is a thin layer over this class and the CLI's ``keys`` and
``audit`` commands use it too. Every operation takes the calling :class:`Party` and an explicit
moment; every write and every eligibility answer is appended to the audit log.
"""

from __future__ import annotations

import datetime as dt
import gc
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from civiscore.api.keys import KeyProblem, KeyStore, Party
from civiscore.audit.log import AuditEvent, AuditLog, VerifyReport, anchor_path
from civiscore.audit.signing import (
    create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_path,
)
from civiscore.decisions.check import Decision, UnknownService
from civiscore.decisions.index import BatchAnswers, DecisionIndex
from civiscore.home import load_key
from civiscore.ids import pseudonym, pseudonym_sql, subject_type, valid_ids
from civiscore.ingest.readers import FIELDS, raw_table
from civiscore.ingest.validate import (
    CHECKED,
    IDS,
    KEY,
    append_to_stage,
    check_stage,
    create_stage,
    drop_stage,
    prepare,
    rejects_sql,
)
from civiscore.recorder import Recorder
from civiscore.rights.explain import Explanation, explain
from civiscore.rulebook import registry
from civiscore.rulebook.load import loads
from civiscore.rulebook.model import Rulebook
from civiscore.settings import Settings
from civiscore.store import access, migrate
from civiscore.store.access import Accesses, AccessRow
from civiscore.store.operational import (
    Appeal,
    AppealEvent,
    ServedListing,
    Setting,
    default_url,
    make_engine,
)
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace

STOP_SWITCH = "enforcement_suspended"
RULEBOOK_IN_FORCE = "rulebook-in-force.yaml"


class Forbidden(PermissionError):
    """The party's key does not cover this operation or this subject."""


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    """A request that names something wrong; ``field`` says which part."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RowProblem:
    index: int
    field: str
    reason: str


@dataclass(frozen=True)
class Submission:
    accepted: int
    duplicates: int
    rejected: list[RowProblem]


@dataclass(frozen=True)
class Eligibility:
    decision: Decision
    enforcement_suspended: bool


class Operations:
    """What operating the scheme needs without the record store: keys, the audit log, the
    operational database. The CLI's ``keys`` and ``audit`` commands use it while ``serve``
    holds the store."""

    def __init__(self, home: Path, settings: Settings, *, key: bytes, clock: Any = now_local):
        self.home = home
        self.settings = settings
        self.clock = clock
        self.pseudonym_key = key
        self.ops = make_engine(settings.database_url or default_url(home))
        migrate.upgrade(self.ops)
        self.keys = KeyStore(self.ops)
        create_signing_key(home)
        self.audit = AuditLog(
            self.ops,
            signing_key=load_signing_key(home),
            anchor_file=anchor_path(home),
        )

    @classmethod
    def open(cls, home: Path, settings: Settings | None = None, **kw: Any) -> Operations:
        return cls(home, settings or Settings.from_env(), key=load_key(home), **kw)

    def close(self) -> None:
        self.ops.dispose()

    def rulebook(self) -> Rulebook:
        """The rulebook in force, from the copy the service keeps beside the store."""
        path = self.home / RULEBOOK_IN_FORCE
        if path.exists():
            return loads(path.read_text(encoding="utf-8"), str(path))
        ws = Workspace.open(self.home, read_only=True)
        try:
            return ws.rulebook_at(self.clock())
        finally:
            ws.close()

    # -- audit -------------------------------------------------------------------------------

    def log(self, party: Party, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        """Append one event to the audit log (pseudonyms only, never raw IDs)."""
        self.audit.append(
            [AuditEvent(party.name, party.role, action, subject, detail)], self.clock()
        )

    def log_refusal(self, party: Party, action: str, why: str) -> None:
        """Log a refused attempt (wrong role, another party's subject or service)."""
        self.log(party, "refused." + action, None, {"why": why})

    def _require(self, party: Party, *roles: str) -> None:
        if party.role not in roles:
            raise Forbidden(
                f"a {party.role} key cannot do this; it needs a {' or '.join(roles)} key"
            )

    def verify_audit(self) -> VerifyReport:
        return self.audit.verify(
            load_public_key(public_key_path(self.home)), anchor_file=anchor_path(self.home)
        )

    def _pseudonym(self, raw_id: str, field: str) -> str:
        try:
            subject_type(raw_id)
        except ValueError as exc:
            raise Invalid(str(exc), field) from exc
        return pseudonym(self.pseudonym_key, raw_id)

    # -- keys --------------------------------------------------------------------------------

    def create_key_unchecked(
        self, *, actor: Party, subject_id: str | None = None, **kw: Any
    ) -> tuple[str, Party]:
        """Create a key (from the CLI by the operator, or through an admin key)."""
        subject = None
        if subject_id is not None:
            subject = self._pseudonym(subject_id, "subject_id")
        department = kw.get("department")
        services = kw.get("services") or []
        rb = self.rulebook()
        if department is not None and department not in rb.departments:
            raise KeyProblem(
                f"unknown department {department!r}; known: {', '.join(rb.departments)}"
            )
        unknown = [s for s in services if s not in rb.services]
        if unknown:
            raise KeyProblem(
                f"unknown service(s) {', '.join(unknown)}; known: {', '.join(rb.services)}"
            )
        key, created = self.keys.create(at=self.clock(), subject=subject, **kw)
        self.log(
            actor,
            "key.create",
            subject,
            {
                "name": created.name,
                "role": created.role,
                "department": created.department,
                "services": list(created.services),
            },
        )
        return key, created

    def revoke_key(self, actor: Party, name: str) -> None:
        try:
            revoked = self.keys.revoke(name, self.clock())
        except KeyProblem as exc:
            raise NotFound(str(exc)) from exc
        self.log(actor, "key.revoke", revoked.subject, {"name": name, "role": revoked.role})


class Service(Operations):
    """The whole scheme: operations plus the record store, the engine and served decisions."""

    def __init__(self, ws: Workspace, settings: Settings, *, clock: Any = now_local):
        super().__init__(ws.home, settings, key=ws.key, clock=clock)
        self.ws = ws
        # DuckDB work (writes and evaluations) is serialised; served decisions are read freely.
        self.lock = threading.RLock()
        self.index: DecisionIndex | None = None
        self.recorder = Recorder(self.ops, self.audit, self.clock)
        self._suspended: bool | None = None  # the stop switch, cached: read on every check
        self._ids = duckdb.connect()  # set-based ID checks for batch eligibility
        self._ids_lock = threading.Lock()

    @classmethod
    def open(cls, home: Path, settings: Settings | None = None, **kw: Any) -> Service:
        return cls(Workspace.open(home), settings or Settings.from_env(), **kw)

    def close(self) -> None:
        self.recorder.close()
        self._ids.close()
        self.ws.close()
        super().close()

    def rulebook(self) -> Rulebook:
        return self.ws.rulebook_at(self.clock())

    # -- served decisions --------------------------------------------------------------------

    def refresh(self, sids: Sequence[int] | None = None) -> DecisionIndex:
        """Rebuild served decisions for everyone, or only for the subjects ``sids``."""
        at = self.clock()
        with self.lock:
            rb = self.ws.rulebook_at(at)
            self.index = DecisionIndex.build(self.ws.engine, rb, at, sids, into=self.index)
            self._persist_served(sids, at)
            if sids is None:
                self._keep_rulebook_copy(at)
                # The index is hundreds of thousands of long-lived objects: left to the cyclic
                # collector, every full collection walks them all and stalls every request in
                # flight (tens of milliseconds at 100,000 residents). They hold no cycles.
                gc.collect()
                gc.freeze()
        return self.index

    def _keep_rulebook_copy(self, at: dt.datetime) -> None:
        keep_rulebook_copy(self.ws, at)

    def _persist_served(self, sids: Sequence[int] | None, at: dt.datetime) -> None:
        assert self.index is not None
        index = self.index
        if sids is None:
            subjects = None
            rows = list(index.entries())
        else:
            wanted = set(sids)
            subjects = [p for p, sid in index.sid_of.items() if sid in wanted]
            rows = [(p, s) for p in subjects for s in index.by_subject.get(p, ())]
        with Session(self.ops) as session, session.begin():
            stmt = delete(ServedListing)
            if subjects is not None:
                stmt = stmt.where(ServedListing.subject.in_(subjects))
            session.execute(stmt)
            if rows:
                session.execute(
                    insert(ServedListing),
                    [
                        {
                            "subject": p,
                            "listing": s.listing,
                            "list": s.list,
                            "since": s.since,
                            "until": s.until,
                            "department": s.department,
                            "record_id": s.record_id,
                            "reference": s.reference,
                            "refreshed_at": at,
                        }
                        for p, s in rows
                    ],
                )

    def _index(self) -> DecisionIndex:
        if self.index is None:
            self.refresh()
        assert self.index is not None
        return self.index

    # -- the stop switch ---------------------------------------------------------------------

    def enforcement_suspended(self) -> bool:
        if self._suspended is None:
            with Session(self.ops) as session:
                row = session.get(Setting, STOP_SWITCH)
                self._suspended = row is not None and row.value == "true"
        return self._suspended

    def set_stop_switch(self, party: Party, suspended: bool, reason: str) -> None:
        self._require(party, "admin")
        if not reason.strip():
            raise Invalid("say why enforcement is switched", "reason")
        at = self.clock()
        value = "true" if suspended else "false"
        with Session(self.ops) as session, session.begin():
            row = session.get(Setting, STOP_SWITCH)
            if row is None:
                session.add(
                    Setting(key=STOP_SWITCH, value=value, changed_at=at, changed_by=party.name)
                )
            else:
                row.value, row.changed_at, row.changed_by = value, at, party.name
        self._suspended = suspended
        self.log(party, "stop_switch." + ("on" if suspended else "off"), None, {"reason": reason})

    # -- departments -------------------------------------------------------------------------

    def submit_records(self, party: Party, rows: list[dict[str, Any]]) -> Submission:
        """Validate and store a department's records; refresh its subjects' decisions at once."""
        self._require(party, "department")
        assert party.department is not None
        if len(rows) > self.settings.max_batch_records:
            raise Invalid(
                f"{len(rows)} records in one submission; send at most "
                f"{self.settings.max_batch_records}",
                "records",
            )
        at = self.clock()
        with self.lock:
            rb = self.ws.rulebook_at(at)
            dep = rb.departments.get(party.department)
            if dep is None:
                raise Invalid(f"department {party.department!r} is not in the rulebook in force")
            con = self.ws.store.con
            stage = create_stage(con, party.department, dep, at)
            try:
                append_to_stage(stage, prepare(_raw_table(rows)))
                check_stage(stage, self.ws.key)
                rejects = con.sql(rejects_sql()).to_arrow_table()
                # IDS holds exactly the subjects of the accepted rows.
                pseudonyms = [
                    str(r[0]) for r in con.execute(f"SELECT pseudonym FROM {IDS}").fetchall()
                ]
                result = self.ws.store.write_checked(
                    party.department, CHECKED, IDS, at, key=KEY, want_sids=True
                )
            finally:
                drop_stage(stage)
            sids = result.sids or []
        problems = [
            RowProblem(int(r["row"]) - 1, str(r["field"]), str(r["reason"]))
            for r in rejects.select(["row", "field", "reason"]).to_pylist()
        ]
        conflict_rows = set(result.conflicts.column("row").to_pylist())
        problems += [
            RowProblem(
                int(r) - 1,
                "record_id",
                "record_id already stored with different content; send a record that "
                "retracts it instead",
            )
            for r in sorted(conflict_rows)
        ]
        if sids:
            self.refresh(sids)
        self.log(
            party,
            "records.submit",
            None,
            {
                "department": party.department,
                "received": len(rows),
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": len(problems),
                "subjects": sorted(set(pseudonyms)),
            },
        )
        return Submission(
            result.accepted, result.duplicates, sorted(problems, key=lambda p: p.index)
        )

    # -- booking and hiring systems ----------------------------------------------------------

    def _service_scope(self, party: Party, service: str) -> None:
        self._require(party, "service")
        if service not in party.services:
            raise Forbidden(
                f"this key is registered for {', '.join(party.services)}, not {service!r}"
            )

    def check(self, party: Party, raw_id: str, service: str) -> Eligibility:
        result, log = self._decide(party, raw_id, service)
        self.recorder.record(*log)
        return result

    async def check_async(self, party: Party, raw_id: str, service: str) -> Eligibility:
        """:meth:`check` for the event loop: the decision is a lookup, and waiting for the log
        to commit holds no thread."""
        result, log = self._decide(party, raw_id, service)
        await self.recorder.record_async(*log)
        return result

    def _decide(
        self, party: Party, raw_id: str, service: str
    ) -> tuple[Eligibility, tuple[Accesses, list[AuditEvent], dt.datetime]]:
        self._service_scope(party, service)
        p = self._pseudonym(raw_id, "subject_id")
        at = self.clock()
        index = self._index()
        if service not in index.rb.services:
            raise UnknownService(f"unknown service {service!r}")
        decision = index.decide(p, service, at)
        suspended = self.enforcement_suspended()
        if suspended and not decision.allowed and index.rb.services[service].kind == "restriction":
            decision = decision.model_copy(update={"allowed": True})
        code = decision.reasons[0].code if decision.reasons else None
        log = self._access_log(party, service, [p], [decision.allowed], [code], at)
        return Eligibility(decision, suspended), log

    def check_batch(
        self, party: Party, service: str, raw_ids: Sequence[str]
    ) -> tuple[BatchAnswers, bool]:
        """Allowed and reason code per subject, in order; plus whether enforcement is off."""
        self._service_scope(party, service)
        if len(raw_ids) > self.settings.max_batch_checks:
            raise Invalid(
                f"{len(raw_ids)} subjects in one batch; send at most "
                f"{self.settings.max_batch_checks}",
                "subject_ids",
            )
        pseudonyms = self._pseudonyms(raw_ids)
        at = self.clock()
        index = self._index()
        if service not in index.rb.services:
            raise UnknownService(f"unknown service {service!r}")
        suspended = self.enforcement_suspended()
        answers = index.quick_many(pseudonyms, service, at)
        if suspended and index.rb.services[service].kind == "restriction":
            answers = BatchAnswers([True] * len(pseudonyms), answers.reason_codes)
        self.recorder.record(
            *self._access_log(party, service, pseudonyms, answers.allowed, answers.reason_codes, at)
        )
        return answers, suspended

    def _pseudonyms(self, raw_ids: Sequence[str]) -> list[str]:
        """Validate and pseudonymise many IDs at once: the ingest's normalisation and keyed
        hash in one SQL statement, the ID checks on a byte matrix (``ids.valid_ids``: 20-60 ms
        for 100,000 IDs, against about 300 ms for the same checks in SQL)."""
        table = pa.table({"raw": pa.array(list(raw_ids), pa.string())})
        sql = f"""
            SELECT {pseudonym_sql(self.pseudonym_key, "v")} AS p, v
            FROM (SELECT upper(trim(raw)) AS v FROM batch_ids)"""
        with self._ids_lock:
            self._ids.register("batch_ids", table)
            try:
                result = self._ids.sql(sql).to_arrow_table()
            finally:
                self._ids.unregister("batch_ids")
        ok = valid_ids(result.column("v"))
        if not ok.all():
            bad = int(np.argmin(ok))
            self._pseudonym(raw_ids[bad], f"subject_ids[{bad}]")  # raises with the reason
            raise Invalid(f"subject_ids[{bad}] is not a valid ID", f"subject_ids[{bad}]")
        pseudonyms: list[str] = result.column("p").to_pylist()
        return pseudonyms

    def _access_log(
        self,
        party: Party,
        service: str,
        subjects: Sequence[str],
        allowed: Sequence[bool],
        codes: Sequence[str | None],
        at: dt.datetime,
    ) -> tuple[Accesses, list[AuditEvent], dt.datetime]:
        """What the recorder must commit before the answers are given: an access row per
        subject and one audit entry for the request."""
        accesses = Accesses(at, party.name, service, subjects, allowed, codes)
        if len(subjects) == 1:
            detail: dict[str, Any] = {
                "service": service,
                "allowed": allowed[0],
                "reason_code": codes[0],
            }
            event = AuditEvent(party.name, party.role, "eligibility.check", subjects[0], detail)
        else:
            event = AuditEvent(
                party.name,
                party.role,
                "eligibility.batch",
                None,
                {"service": service, "subjects": len(subjects), "denied": allowed.count(False)},
            )
        return accesses, [event], at

    # -- subjects ----------------------------------------------------------------------------

    def own_sid(self, party: Party) -> int | None:
        """The subject number of a subject key's own subject (None: no records yet)."""
        self._require(party, "subject")
        assert party.subject is not None
        return self.ws.store.sid_for(party.subject)

    def my_record(self, party: Party) -> Explanation:
        sid = self.own_sid(party)
        at = self.clock()
        with self.lock:
            x = explain(self.ws.engine, self.ws.rulebook_at(at), sid, at, at)
        self.log(party, "record.read", party.subject, {})
        return x

    def my_accesses(self, party: Party, limit: int, offset: int) -> list[AccessRow]:
        self._require(party, "subject")
        assert party.subject is not None
        with Session(self.ops) as session:
            return access.of_subject(
                session, party.subject, min(limit, self.settings.max_page_size), offset
            )

    # -- appeals -----------------------------------------------------------------------------

    def file_appeal(
        self,
        party: Party,
        *,
        department: str,
        record_id: str,
        listing: str | None,
        statement: str,
    ) -> Appeal:
        sid = self.own_sid(party)
        if not statement.strip():
            raise Invalid("say why the record or listing is wrong", "statement")
        owned = (
            sid is not None
            and self.ws.store.con.execute(
                "SELECT count(*) FROM records WHERE sid = ? AND department = ? AND record_id = ?",
                [sid, department, record_id],
            ).fetchall()[0][0]
        )
        if not owned:
            raise NotFound(f"you have no record {record_id!r} from {department!r}")
        at = self.clock()
        if listing is not None and listing not in {
            x.listing for x in self._index().listings(party.subject or "", at)
        }:
            raise Invalid(f"listing {listing!r} is not active on your record", "listing")
        appeal = Appeal(
            subject=party.subject or "",
            target="listing" if listing else "record",
            department=department,
            record_id=record_id,
            listing=listing,
            statement=statement.strip(),
            filed_at=at,
            review_due=at + dt.timedelta(days=self.settings.review_days),
            final_due=at + dt.timedelta(days=self.settings.total_days),
            status="open",
        )
        with Session(self.ops, expire_on_commit=False) as session, session.begin():
            session.add(appeal)
            session.flush()
            session.add(
                AppealEvent(appeal_id=appeal.id, at=at, actor=party.name, event="filed", note=None)
            )
        self.log(
            party, "appeal.file", party.subject, {"appeal": appeal.id, "target": appeal.target}
        )
        return appeal

    def my_appeals(self, party: Party) -> list[Appeal]:
        self._require(party, "subject")
        with Session(self.ops) as session:
            return list(
                session.scalars(
                    select(Appeal).where(Appeal.subject == party.subject).order_by(Appeal.id)
                )
            )

    def appeal_queue(self, party: Party, limit: int, offset: int) -> list[Appeal]:
        self._require(party, "reviewer")
        with Session(self.ops) as session:
            return list(
                session.scalars(
                    select(Appeal)
                    .where(Appeal.status == "open")
                    .order_by(Appeal.review_due, Appeal.id)
                    .limit(min(limit, self.settings.max_page_size))
                    .offset(offset)
                )
            )

    def get_appeal(self, party: Party, appeal_id: int) -> Appeal:
        self._require(party, "reviewer", "subject")
        with Session(self.ops) as session:
            appeal = session.get(Appeal, appeal_id)
        if appeal is None or (party.role == "subject" and appeal.subject != party.subject):
            raise NotFound(f"no appeal {appeal_id}")
        return appeal

    def log_access_by_reviewer(self, party: Party, appeal: Appeal) -> None:
        """A reviewer opening a subject's history is an access to personal data: log it."""
        self.log(party, "appeal.evidence", appeal.subject, {"appeal": appeal.id})

    def appeal_events(self, appeal_id: int) -> list[AppealEvent]:
        with Session(self.ops) as session:
            return list(
                session.scalars(
                    select(AppealEvent)
                    .where(AppealEvent.appeal_id == appeal_id)
                    .order_by(AppealEvent.id)
                )
            )

    def decide_appeal(self, party: Party, appeal_id: int, outcome: str, reason: str) -> Appeal:
        """Uphold, or overturn: the record is withdrawn (ending any listing it triggered)."""
        self._require(party, "reviewer")
        if outcome not in ("uphold", "overturn"):
            raise Invalid("outcome is uphold or overturn", "outcome")
        if not reason.strip():
            raise Invalid("a decision needs a written reason", "reason")
        at = self.clock()
        with Session(self.ops, expire_on_commit=False) as session, session.begin():
            appeal = session.get(Appeal, appeal_id)
            if appeal is None:
                raise NotFound(f"no appeal {appeal_id}")
            if appeal.status != "open":
                raise Invalid(f"appeal {appeal_id} was already decided ({appeal.status})")
            appeal.status = "upheld" if outcome == "uphold" else "overturned"
            appeal.decided_at, appeal.reviewer, appeal.reason = at, party.name, reason.strip()
            session.add(
                AppealEvent(
                    appeal_id=appeal_id,
                    at=at,
                    actor=party.name,
                    event=appeal.status,
                    note=reason.strip(),
                )
            )
        if outcome == "overturn":
            with self.lock:
                sid = self.ws.store.withdraw(
                    appeal.department, appeal.record_id, f"appeal-{appeal_id}", at
                )
            if sid is not None:
                self.refresh([sid])
        self.log(
            party, "appeal.decide", appeal.subject, {"appeal": appeal_id, "outcome": appeal.status}
        )
        return appeal

    # -- admin -------------------------------------------------------------------------------

    def publish_rulebook(self, party: Party, text: str) -> str:
        self._require(party, "admin")
        rb = loads(text, "<published rulebook>")  # RulebookError names every problem
        path = self.ws.home / "rulebooks" / f"{rb.version}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        with self.lock:
            rb, published = registry.publish(self.ws.store, path, self.clock())
        self.log(party, "rulebook.publish", None, {"version": rb.version, "new": published})
        self.refresh()
        return rb.version

    def create_key(self, party: Party, **kw: Any) -> tuple[str, Party]:
        self._require(party, "admin")
        return self.create_key_unchecked(actor=party, **kw)

    # -- auditors ----------------------------------------------------------------------------

    def stats(self, party: Party) -> dict[str, Any]:
        self._require(party, "auditor", "admin")
        index = self._index()
        at = self.clock()
        listed: dict[str, int] = {}
        for _, s in index.entries():
            if s.active_at(at):
                listed[s.listing] = listed.get(s.listing, 0) + 1
        with Session(self.ops) as session:
            open_appeals = (
                session.scalar(
                    select(func.count()).select_from(Appeal).where(Appeal.status == "open")
                )
                or 0
            )
            overdue = (
                session.scalar(
                    select(func.count())
                    .select_from(Appeal)
                    .where(Appeal.status == "open", Appeal.review_due < at)
                )
                or 0
            )
            checks, denied = access.counts(session)
        return {
            "as_of": at.isoformat(),
            "rulebook_version": index.rb.version,
            "listings": listed,
            "appeals_open": open_appeals,
            "appeals_overdue": overdue,
            "checks": checks,
            "checks_denied": denied,
            "enforcement_suspended": self.enforcement_suspended(),
        }


SYSTEM = Party(name="operator (cli)", role="admin")


def keep_rulebook_copy(ws: Workspace, at: dt.datetime) -> None:
    """Write the rulebook in force beside the store, for tools that run beside the server
    (which holds the store) such as ``civiscore keys``."""
    books = [b for b in ws.store.rulebooks() if b.effective_from <= at.date()]
    if books:
        chosen = max(books, key=lambda b: (b.effective_from, b.loaded_at))
        (ws.home / RULEBOOK_IN_FORCE).write_text(chosen.yaml, encoding="utf-8")


def _raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    """API rows as the raw string batch the ingest validator reads (row = 1-based index)."""
    cols: dict[str, pa.Array] = {"row": pa.array(range(1, len(rows) + 1), pa.int64())}
    for f in FIELDS:
        cols[f] = pa.array([None if r.get(f) is None else str(r.get(f)) for r in rows], pa.string())
    return raw_table(cols, len(rows))
