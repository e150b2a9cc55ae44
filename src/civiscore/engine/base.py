"""The engine's narrow interface: run the plan for (T, K[, subject]) and write snapshots.

The DuckDB engine implements it over the embedded store; a Spark engine runs the same
:mod:`civiscore.engine.plan` over Parquet.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from civiscore.rulebook.model import Rulebook
from civiscore.store.base import Snapshot


class Engine(Protocol):
    def evaluate(
        self, rb: Rulebook, at: dt.datetime, known_at: dt.datetime, sid: int | None = None
    ) -> Any:
        """Build every plan stage; returns a handle whose stage tables can be queried."""
        ...

    def score(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        created_at: dt.datetime | None = None,
    ) -> Snapshot:
        """Materialise a snapshot for the whole population."""
        ...
