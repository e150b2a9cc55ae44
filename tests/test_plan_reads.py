"""The plan's own reading of which tables a stage reads, which decides when a full score drops
a spent stage, agrees with a real SQL parser on every statement the engine runs."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import sqlglot
from sqlglot import exp

from civiscore.engine.duckdb_engine import _FRESH
from civiscore.engine.plan import spent_after, stages, tables_read
from civiscore.rulebook.load import demo_rulebook_path, load

WHEN = dt.datetime(2026, 10, 31)
RULEBOOK = load(demo_rulebook_path())
PLANS = {
    "everyone": stages(RULEBOOK, WHEN, WHEN, None),
    "everyone, store tables": stages(
        RULEBOOK,
        WHEN,
        WHEN,
        None,
        population="SELECT sid FROM subject_firsts",
        withdrawals=("withdrawals", "withdrawn_rows"),
    ),
    "a set, its population given": stages(
        RULEBOOK, WHEN, WHEN, None, population="SELECT sid FROM affected"
    ),
    "one subject": stages(RULEBOOK, WHEN, WHEN, 7),
}
STATEMENTS = {
    f"{plan}: {stage.name}": stage.sql for plan, found in PLANS.items() for stage in found
} | {f"snapshot: {table}": sql.replace("$id", "1") for table, sql in _FRESH.items()}


def _parsed(sql: str) -> Counter[str]:
    tree = sqlglot.parse_one(sql, read="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return Counter(t.name for t in tree.find_all(exp.Table) if t.name not in ctes)


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_the_plan_reads_what_a_parser_reads(name: str) -> None:
    assert tables_read(STATEMENTS[name]) == _parsed(STATEMENTS[name])


def test_a_full_score_drops_only_what_nothing_later_reads() -> None:
    keep = {name for sql in _FRESH.values() for name in tables_read(sql)}
    spent = spent_after(PLANS["everyone"], keep)
    # The retractions are last read (through the views) by the last aggregation of matches.
    assert spent["points"] == ["withdrawn"] and spent["caps"] == []
    dropped = {name for names in spent.values() for name in names}
    assert not dropped & keep
