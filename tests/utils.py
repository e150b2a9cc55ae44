"""Factories for tests: valid subject IDs, department files, workspaces with records."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import itertools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from civiscore.engine.spark_runtime import why_no_spark
from civiscore.ids import USCC_ALPHABET, resident_check_char, uscc_check_char
from civiscore.workspace import Workspace

FIELDS = ("record_id", "subject_id", "kind", "occurred_at", "quantity", "reference", "retracts")
_counter = itertools.count()


def resident_id(n: int, region: str = "110105") -> str:
    """A valid resident ID, distinct for each n < 36,500,000."""
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=(n // 1000) % 20000)
    first17 = f"{region}{birth:%Y%m%d}{n % 1000:03d}"
    return first17 + resident_check_char(first17)


def org_id(n: int) -> str:
    """A valid unified social credit code, distinct for each n."""
    code = ""
    m = n
    for _ in range(9):
        code = USCC_ALPHABET[m % 31] + code
        m //= 31
    first17 = "91110105" + code
    return first17 + uscc_check_char(first17)


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})
    return path


def ingest_rows(
    ws: Workspace,
    department: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    received_at: dt.datetime | None = None,
    tmp: Path | None = None,
) -> Any:
    """Write rows to a CSV in the workspace home and ingest them."""
    folder = tmp or ws.home / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_csv(folder / f"{department}-{next(_counter)}.csv", rows)
    return ws.ingest(department, path, received_at=received_at)


@functools.cache
def spark_problem() -> str | None:
    """Why the Spark engine cannot run here (None: it can); asked once per test session."""
    return why_no_spark()


def require_spark() -> None:
    """Skip the calling test when Spark cannot run, with the reason; in CI, fail instead.

    CI sets CIVISCORE_REQUIRE_SPARK=1: a Spark test that cannot run there is a failure, so a
    missing pyspark or Java can never pass as a green run that tested nothing.
    """
    problem = spark_problem()
    if problem is None:
        return
    message = f"the Spark engine cannot run here: {problem}"
    if os.environ.get("CIVISCORE_REQUIRE_SPARK") == "1":
        pytest.fail(f"CIVISCORE_REQUIRE_SPARK=1 and {message}", pytrace=False)
    pytest.skip(message)
