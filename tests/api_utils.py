"""A running civiscore service for API tests: a store with records, keys for every role."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient

from civiscore.api.app import create_app
from civiscore.service import SYSTEM, Service
from civiscore.settings import Settings
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace
from tests.utils import org_id, resident_id

P1, P2, P3 = resident_id(101), resident_id(102), resident_id(103)
ORG = org_id(104)


class Clock:
    """The service's clock: real time, moved forward by tests."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return now_local() + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += dt.timedelta(**delta)


@dataclass
class Api:
    client: TestClient
    service: Service
    clock: Clock
    keys: dict[str, str] = field(default_factory=dict)

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def get(self, who: str, url: str, **kw: object):  # type: ignore[no-untyped-def]
        return self.client.get(url, headers=self.h(who), **kw)  # type: ignore[arg-type]

    def post(self, who: str, url: str, body: object, **kw: object):  # type: ignore[no-untyped-def]
        return self.client.post(url, json=body, headers=self.h(who), **kw)  # type: ignore[arg-type]

    def put(self, who: str, url: str, body: object):  # type: ignore[no-untyped-def]
        return self.client.put(url, json=body, headers=self.h(who))

    def delete(self, who: str, url: str):  # type: ignore[no-untyped-def]
        return self.client.delete(url, headers=self.h(who))


KEYS: dict[str, dict[str, object]] = {
    "admin": {"role": "admin"},
    "courts": {"role": "department", "department": "courts"},
    "transport": {"role": "department", "department": "transport"},
    "rail": {"role": "service", "services": ["high_speed_rail"]},
    "airline": {"role": "service", "services": ["air_travel"]},
    "rental": {"role": "service", "services": ["deposit_free_rental"]},
    "p1": {"role": "subject", "subject_id": P1},
    "p2": {"role": "subject", "subject_id": P2},
    "reviewer": {"role": "reviewer"},
    "auditor": {"role": "auditor"},
}


def days_ago(n: int) -> str:
    return (now_local() - dt.timedelta(days=n)).replace(microsecond=0).isoformat()


@contextmanager
def running(home: Path, database_url: str, **settings: object) -> Iterator[Api]:
    ws, _ = Workspace.init(home)
    clock = Clock()
    service = Service(
        ws,
        Settings(database_url=database_url, **settings),  # type: ignore[arg-type]
        clock=clock,
    )
    keys = {}
    for name, spec in KEYS.items():
        spec = dict(spec)
        key, _ = service.create_key_unchecked(actor=SYSTEM, name=name, **spec)
        keys[name] = key
    try:
        with TestClient(create_app(service)) as client:
            yield Api(client, service, clock, keys)
    finally:
        service.close()
