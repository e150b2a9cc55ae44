"""API keys: one per party, a role per key, stored only as a hash.

A key is 256 random bits; a SHA-256 of it is enough to store (no slow hash is needed for
secrets that cannot be guessed). The plain key is shown once, when created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from civiscore.store.operational import ROLES, ApiKey

Role = Literal["department", "service", "subject", "reviewer", "auditor", "admin"]

_CACHE_SECONDS = 5.0


class KeyProblem(ValueError):
    """A key request that cannot be honoured (bad role, missing scope, duplicate name)."""


@dataclass(frozen=True)
class Party:
    """The authenticated caller, with exactly the scope its key grants."""

    name: str
    role: Role
    department: str | None = None
    services: tuple[str, ...] = ()
    subject: str | None = None  # pseudonym of the subject a subject key belongs to


@dataclass(frozen=True)
class KeyInfo:
    name: str
    role: str
    prefix: str
    department: str | None
    services: list[str]
    has_subject: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._cache: dict[str, tuple[float, Party | None]] = {}
        self._lock = threading.Lock()

    def create(
        self,
        *,
        name: str,
        role: str,
        at: dt.datetime,
        department: str | None = None,
        services: list[str] | None = None,
        subject: str | None = None,
    ) -> tuple[str, Party]:
        """Create a key; returns the plain key (shown once) and its party."""
        services = sorted(set(services or []))
        _check_scope(name, role, department, services, subject)
        key = f"csk_{role[:3]}_{secrets.token_urlsafe(32)}"
        with Session(self.engine) as session, session.begin():
            if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
                raise KeyProblem(f"a key named {name!r} exists; choose another name or revoke it")
            session.add(
                ApiKey(
                    name=name,
                    role=role,
                    key_hash=hash_key(key),
                    prefix=key[:12],
                    department=department,
                    services=services,
                    subject=subject,
                    created_at=at,
                )
            )
        party = Party(name, role, department, tuple(services), subject)  # type: ignore[arg-type]
        return key, party

    def list(self) -> list[KeyInfo]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name))
            return [
                KeyInfo(
                    r.name,
                    r.role,
                    r.prefix,
                    r.department,
                    list(r.services or []),
                    r.subject is not None,
                    r.created_at,
                    r.revoked_at,
                )
                for r in rows
            ]

    def revoke(self, name: str, at: dt.datetime) -> Party:
        """Revoke a key by name; effective at once in this process, within seconds elsewhere."""
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise KeyProblem(f"no key named {name!r}; `civiscore keys list` shows the names")
            if row.revoked_at is None:
                row.revoked_at = at
            party = _party(row)
        with self._lock:
            self._cache.clear()
        return party

    def active(self, name: str) -> bool:
        """Whether the key named ``name`` exists and is not revoked (cached for seconds)."""
        now = time.monotonic()
        cache_key = "name:" + name
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None and now - hit[0] < _CACHE_SECONDS:
                return hit[1] is not None
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.name == name))
            party = None if row is None or row.revoked_at is not None else _party(row)
        with self._lock:
            self._cache[cache_key] = (now, party)
        return party is not None

    def cached(self, key: str) -> tuple[bool, Party | None]:
        """(True, party) when the cache still answers for ``key``; (False, None) when only
        :meth:`authenticate` can, which reads the database."""
        digest = hash_key(key)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < _CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def authenticate(self, key: str) -> Party | None:
        """The party of a valid, unrevoked key, or None."""
        found, party = self.cached(key)
        if found:
            return party
        digest = hash_key(key)
        now = time.monotonic()
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            party = None if row is None or row.revoked_at is not None else _party(row)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, party)
        return party


def _party(row: ApiKey) -> Party:
    return Party(
        row.name,
        row.role,  # type: ignore[arg-type]
        row.department,
        tuple(row.services or []),
        row.subject,
    )


def _check_scope(
    name: str, role: str, department: str | None, services: list[str], subject: str | None
) -> None:
    if not name.strip() or len(name) > 100:
        raise KeyProblem("give the key a name of 1 to 100 characters, e.g. rail-ticketing")
    if role not in ROLES:
        raise KeyProblem(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    needs = {
        "department": (department is not None, "--department NAME"),
        "service": (bool(services), "--service NAME (one or more)"),
        "subject": (subject is not None, "--subject ID"),
    }
    if role in needs and not needs[role][0]:
        raise KeyProblem(f"a {role} key needs {needs[role][1]}")
    extra = [
        flag
        for flag, given, owner in (
            ("--department", department is not None, "department"),
            ("--service", bool(services), "service"),
            ("--subject", subject is not None, "subject"),
        )
        if given and owner != role
    ]
    if extra:
        raise KeyProblem(f"a {role} key takes no {', '.join(extra)}: one party, one scope")
