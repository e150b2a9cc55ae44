"""Benchmark: stages of this checkout's plan against another checkout's, alternating in one process.

A whole score moves by a fifth between runs on a shared machine, more than most changes to one
stage are worth. This times chosen stages of two plans (``civiscore.engine.plan`` here and the
same module of another checkout, e.g. a ``git worktree`` of the previous commit) on one store,
in one process, alternating which goes first each round, and checks that both give the same
rows (their count and a checksum, per stage). When a change renames or merges stages,
``--other-stages`` names the other plan's: each round then also reports the timed stages
together, and rows are compared for the stages both plans have.

Each round creates the plan's views, then the named stages as tables in plan order (each
stage read by a later one is built first and timed too); stages not named but needed are built
untimed.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python bench/plan_ab.py --home bench/out/home-21900000-8-0 \\
        --other /tmp/base/src --stages caps,points --rounds 6
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import civiscore.engine.plan as this_plan
from civiscore.store import firsts, withdrawals
from civiscore.synth.city import DEFAULT_END
from civiscore.workspace import Workspace


def other_plan(src: Path) -> ModuleType:
    """``civiscore.engine.plan`` of the checkout whose ``src`` folder is given."""
    path = src / "civiscore" / "engine" / "plan.py"
    spec = importlib.util.spec_from_file_location("other_plan", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_plan"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--home", type=Path, required=True, help="a store score_bench.py left")
    p.add_argument("--other", type=Path, required=True, help="the other checkout's src folder")
    p.add_argument("--stages", default="caps,points", help="the stages to time, by name")
    p.add_argument(
        "--other-stages",
        default=None,
        help="the other plan's stages to time, when its stages are named otherwise (default: "
        "--stages); rows are compared for the stages both name",
    )
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="6GB")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = {
        "this": [s.strip() for s in args.stages.split(",") if s.strip()],
        "other": [s.strip() for s in (args.other_stages or args.stages).split(",") if s.strip()],
    }
    common = [s for s in names["this"] if s in names["other"]]
    if not common:
        # Otherwise the rows would be "the same" with nothing compared.
        raise SystemExit(
            "--stages and --other-stages: name at least one stage in both, to compare rows"
        )
    ws = Workspace.open(args.home)
    try:
        con = ws.store.con
        con.execute(f"SET threads = {int(args.threads)}")
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
        con.execute("SET preserve_insertion_order = false")
        at = dt.datetime.combine(DEFAULT_END, dt.time.max)
        known_at = con.execute("SELECT max(received_at) FROM records").fetchall()[0][0]
        rb = ws.rulebook_at(at)
        withdrawals.fold_new(con)
        cur = con.cursor()
        population = firsts.population_sql(cur, "records", at, known_at)
        tables = withdrawals.plan_tables(cur, "records")
        plans = {
            name: module.stages(rb, at, known_at, None, population=population, withdrawals=tables)
            for name, module in (("this", this_plan), ("other", other_plan(args.other)))
        }
        for name, plan in plans.items():
            missing = [s for s in names[name] if s not in {stage.name for stage in plan}]
            if missing:
                option = "--stages" if name == "this" or not args.other_stages else "--other-stages"
                raise SystemExit(
                    f"{option}: {', '.join(missing)} not in {name} plan's stages "
                    f"({', '.join(stage.name for stage in plan)}); name stages that plan has"
                )
        last = {
            name: max(i for i, s in enumerate(plan) if s.name in names[name])
            for name, plan in plans.items()
        }
        seconds: dict[str, dict[str, list[float]]] = {
            n: {s: [] for s in [*names[n], "timed stages together"]} for n in plans
        }
        answers: dict[str, dict[str, list[tuple[object, ...]]]] = {}
        for r in range(args.rounds):
            for name in ("other", "this") if r % 2 == 0 else ("this", "other"):
                built = []
                together = 0.0
                for stage in plans[name][: last[name] + 1]:
                    kind = "VIEW" if stage.view else "TABLE"
                    start = time.perf_counter()
                    cur.execute(f"CREATE OR REPLACE TEMP {kind} {stage.name} AS {stage.sql}")
                    if stage.name in names[name]:
                        seconds[name][stage.name].append(time.perf_counter() - start)
                        together += seconds[name][stage.name][-1]
                    built.append((stage.name, kind))
                # Rows and an order-free checksum of them (a sum of each row's hash).
                answers[name] = {
                    s: cur.execute(f"SELECT count(*), sum(hash(t)) FROM {s} t").fetchall()
                    for s in common
                }
                seconds[name]["timed stages together"].append(together)
                print(
                    f"round {r + 1} {name:5} "
                    + ", ".join(f"{s} {seconds[name][s][-1]:.2f} s" for s in seconds[name]),
                    flush=True,
                )
                for stage_name, kind in reversed(built):
                    cur.execute(f"DROP {kind} IF EXISTS {stage_name}")
        same = answers["this"] == answers["other"]
        summary = {
            name: {s: {"median": statistics.median(v), "runs": v} for s, v in by.items()}
            for name, by in seconds.items()
        }
        print(json.dumps({"same_rows": same, "seconds": summary}, indent=2))
        return 0 if same else 1
    finally:
        ws.close()


if __name__ == "__main__":
    raise SystemExit(main())
