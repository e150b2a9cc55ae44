"""Benchmark: where the Spark engine's snapshot write goes, frame by frame.

Scores once with ``SparkEngine.score_frames`` (the cached stages computed on the way), then
writes the snapshot's frames (scores, contexts, listings, caps, population) ``--rounds`` times,
each frame timed, in each of the ways ``--variants`` names (Parquet options passed to the
writer): ``default``, ``nodict`` (no dictionary encoding), ``lz4``, ``uncompressed``. It reads
the Parquet ``spark_bench.py`` exported (run that first, for the same arguments)::

    .venv/bin/python bench/spark_write_profile.py --residents 21900000 --years 8 \\
        --driver-memory 12g --shuffle-partitions 16 --rounds 3

The first round also pays the JVM's warm-up; compare the later ones. Output: a line per
round and variant (total seconds, seconds per frame, bytes written) and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

from civiscore.engine.spark_engine import SparkEngine, local_session
from civiscore.synth.city import DEFAULT_END
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "nodict": {"parquet.enable.dictionary": "false"},
    "lz4": {"compression": "lz4"},
    "uncompressed": {"compression": "none"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--residents", type=int, default=100_000)
    p.add_argument("--years", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("bench/out"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--shuffle-partitions", type=int, default=4)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    args = p.parse_args()
    tag = f"{args.residents}-{args.years}-{args.seed}"
    home, parquet = args.workdir / f"home-{tag}", args.workdir / f"parquet-{tag}"
    inputs = [parquet / f"{name}.parquet" for name in ("records", "subjects", "subject_firsts")]
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise SystemExit(f"run spark_bench.py with the same arguments first: no {missing[0]}")
    at = dt.datetime.combine(DEFAULT_END, dt.time.max)
    known_at = now_local()
    ws = Workspace.open(home)
    try:
        rb = ws.rulebook_at(at)
    finally:
        ws.close()
    spark = local_session(
        cores=args.cores,
        shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory,
    )
    engine = SparkEngine(spark, *inputs)
    out = Path(tempfile.mkdtemp(prefix="spark-write-"))
    results: list[dict[str, object]] = []
    try:
        start = time.perf_counter()
        frames = engine.score_frames(rb, at, known_at)
        print(f"frames computed in {time.perf_counter() - start:.1f} s", flush=True)
        for r in range(args.rounds):
            for name in args.variants:
                per: dict[str, float] = {}
                total = time.perf_counter()
                for frame_name, frame in frames.items():
                    begin = time.perf_counter()
                    writer = frame.write.mode("overwrite")
                    for key, value in VARIANTS[name].items():
                        writer = writer.option(key, value)
                    writer.parquet(str(out / frame_name))
                    per[frame_name] = round(time.perf_counter() - begin, 2)
                seconds = round(time.perf_counter() - total, 2)
                size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
                print(f"round {r + 1} {name}: {seconds} s {per} {size / 2**20:,.0f} MiB")
                results.append({"round": r + 1, "variant": name, "seconds": seconds, **per})
    finally:
        engine.release()
        spark.stop()
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
