"""Benchmark: in-process eligibility decisions at Beijing scale, against a plain dict lookup.

Run from the repository root (after ``make test`` has made ``.venv``, and after
``bench/http_bench.py`` has made its home, whose served listings this starts from)::

    .venv/bin/python bench/decisions_bench.py --residents 21900000

What it measures, in one process on one core (the structure is Python; nothing here threads):

1. **Index.** The listings served by a scored synthetic city (``served_listings`` of
   ``bench/out/http-home-*``: who is blacklisted or redlisted, for what, since and until when)
   are replicated with fresh pseudonyms until the share of served subjects of ``--residents``
   is the city's, and loaded into :class:`civiscore.decisions.index.DecisionIndex` exactly as
   ``DecisionIndex.build`` fills it. Memory is the growth of the process's resident set.
2. **Single decisions.** ``DecisionIndex.quick`` (allowed + reason code, what a booking system
   receives) over a stream of pseudonyms of which ``--held-share`` are served subjects, the
   rest never seen; decisions per second over the whole stream, and each call's latency
   (``perf_counter_ns`` around it) for the p50/p99.
3. **Batches.** ``DecisionIndex.quick_many`` over the same stream in batches of 100,000.
4. **Notices.** ``DecisionIndex.decide`` (the full adverse-action notice) for served subjects.
5. **Floor.** The same stream through ``dict.get`` on a plain dict with the same keys: the
   least a Python lookup structure costs. The ratios are against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path

from civiscore.decisions.index import DecisionIndex, Served
from civiscore.rulebook.load import loads
from civiscore.rulebook.model import Rulebook

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def served_rows(home: Path, rb: Rulebook) -> tuple[dict[str, list[Served]], int]:
    """Served listings per subject from the home's operational database, and its residents."""
    con = sqlite3.connect(home / "operational.db")
    rows = con.execute(
        "SELECT subject, listing, list, since, until, department, record_id, reference "
        "FROM served_listings"
    ).fetchall()
    con.close()
    out: dict[str, list[Served]] = {}
    for subject, listing, lst, since, until, dep, rec, ref in rows:
        grave = rb.listing(listing).grave
        out.setdefault(subject, []).append(
            Served(listing, lst, grave, _ts(since), _ts(until), dep, rec, ref)
        )
    residents = json.loads((home / "bench-home.json").read_text())["params"]["residents"]
    return out, int(residents)


def _ts(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def grow(index: DecisionIndex, source: dict[str, list[Served]], n: int) -> list[str]:
    """Fill ``index`` with ``n`` subjects shaped like ``source``, each with its own objects."""
    shapes = list(source.values())
    keys = []
    for i in range(n):
        p = secrets.token_hex(16)
        index.by_subject[p] = tuple(
            dataclasses.replace(
                s,
                since=None if s.since is None else s.since.replace(),
                until=None if s.until is None else s.until.replace(),
            )
            for s in shapes[i % len(shapes)]
        )
        index.sid_of[p] = i
        keys.append(p)
    return keys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--residents", type=int, default=21_900_000)
    ap.add_argument("--home", type=Path, default=Path("bench/out/http-home-100000-8-0"))
    ap.add_argument("--decisions", type=int, default=2_000_000)
    ap.add_argument("--held-share", type=float, default=0.1)
    ap.add_argument("--service", default="high_speed_rail")
    args = ap.parse_args(argv)

    rb = loads((args.home / "rulebook-in-force.yaml").read_text(), "rulebook-in-force.yaml")
    source, city_residents = served_rows(args.home, rb)
    target = round(len(source) * args.residents / city_residents)
    at = max(s.since for v in source.values() for s in v if s.since is not None)
    assert at is not None

    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    index = DecisionIndex(rb, at)
    keys = grow(index, source, target)
    gc.collect()
    gc.freeze()  # as the service does after a full refresh
    index_mib = rss_mib() - before
    build_s = time.perf_counter() - t0
    keys_mib = (len(keys) * (49 + 32) + len(keys) * 8) / 2**20  # the list kept for this bench

    rng = secrets.SystemRandom()
    held = int(args.decisions * args.held_share)
    stream = rng.choices(keys, k=held) + [
        secrets.token_hex(16) for _ in range(args.decisions - held)
    ]
    rng.shuffle(stream)

    quick, svc = index.quick, args.service
    t = time.perf_counter()
    for p in stream:
        quick(p, svc, at)
    single_s = time.perf_counter() - t

    ns = time.perf_counter_ns
    lat = []
    for p in stream[:500_000]:
        a = ns()
        quick(p, svc, at)
        lat.append(ns() - a)
    timer = []
    for _ in range(200_000):
        a = ns()
        timer.append(ns() - a)
    lat.sort()
    timer.sort()

    t = time.perf_counter()
    for i in range(0, len(stream), 100_000):
        index.quick_many(stream[i : i + 100_000], svc, at)
    batch_s = time.perf_counter() - t

    notices = rng.choices(keys, k=200_000)
    t = time.perf_counter()
    for p in notices:
        index.decide(p, svc, at)
    notice_s = time.perf_counter() - t

    floor = {p: index.by_subject[p] for p in keys}
    get = floor.get
    t = time.perf_counter()
    for p in stream:
        get(p)
    floor_s = time.perf_counter() - t

    n = len(stream)
    res = {
        "residents": args.residents,
        "served_subjects": target,
        "served_entries": sum(len(v) for v in index.by_subject.values()),
        "index_mib": round(index_mib - keys_mib, 1),
        "build_s": round(build_s, 1),
        "single_per_s": round(n / single_s),
        "single_p50_ns": lat[len(lat) // 2],
        "single_p99_ns": lat[int(len(lat) * 0.99)],
        "timer_p50_ns": timer[len(timer) // 2],
        "batch_per_s": round(n / batch_s),
        "notice_per_s": round(len(notices) / notice_s),
        "floor_per_s": round(n / floor_s),
        "single_vs_floor": round(floor_s / single_s, 2),
        "held_share": args.held_share,
    }
    print(json.dumps(res, indent=2))
    print(
        "| residents | served subjects | index MiB | single decisions/s | p50 / p99 (µs) "
        "| batch decisions/s | notices/s | dict.get floor/s | single/floor |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.residents:,} | {target:,} | {res['index_mib']:,} | {res['single_per_s']:,} "
        f"| {lat[len(lat) // 2] / 1e3:.2f} / {lat[int(len(lat) * 0.99)] / 1e3:.2f} "
        f"| {res['batch_per_s']:,} | {res['notice_per_s']:,} | {res['floor_per_s']:,} "
        f"| {res['single_vs_floor']} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
