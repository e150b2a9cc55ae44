"""Benchmark: eligibility over HTTP against a trivial endpoint of the same server.

Run from the repository root (after ``make test`` has made ``.venv``; needs ``wrk``, which on
Debian or Ubuntu is ``apt-get update && apt-get install -y wrk``)::

    .venv/bin/python bench/http_bench.py --residents 100000 --duration 10

What it does:

1. **Home.** A synthetic city (``civiscore.synth.write_city``; the same ``<workdir>/city-*``
   directories as ``bench/score_bench.py``, reused when their arguments match), a fresh home
   (``Workspace.init``) with every department file ingested, and a ``service`` key for
   ``high_speed_rail`` made with ``civiscore keys create --role service ... --json``. The home
   (``<workdir>/http-home-*``) is reused by later runs with the same arguments. Every run
   starts from the operational database and audit anchor file as they were when the key was
   made (copies kept beside them), so the access and audit logs do not grow from run to run.
2. **Server.** ``civiscore serve`` as a subprocess on 127.0.0.1 and a free port, with the per-key
   rate limit raised out of the way (``CIVISCORE_RATE_LIMIT_PER_SECOND`` and
   ``CIVISCORE_RATE_LIMIT_BURST``); the benchmark waits for ``GET /health`` and always stops the
   server at the end (SIGINT, then SIGTERM, then SIGKILL).
3. **Subjects.** IDs from ``residents.parquet``: a sample is asked through the batch endpoint
   once, which says who is listed (denied ``high_speed_rail``), and a list of ``--ids`` IDs is
   made with ``--denied-share`` of listed residents (as many as there are) and the rest not
   listed, shuffled. Single checks go round-robin through that list.
4. **Saturation** (closed loop): ``wrk -t1 -c<connections> -d<duration>s`` on ``GET /health``
   (no key, no data: the server's floor) and on ``POST /v1/eligibility/check`` (a Lua script
   sends the body and the key), each after a short warm-up, then the check again over one
   connection (requests never overlap). Non-2xx answers count as errors. The server's CPU time
   (``/proc/<pid>/stat``) and wrk's are recorded per run, as cores used.
5. **Latency at half saturation** (open loop): ``wrk2`` is not packaged for Debian, so a small
   generator in this file (asyncio, raw sockets, ``--connections`` persistent connections) sends
   requests on a fixed schedule of half the measured check throughput, and measures each
   latency from the moment the schedule said the request was due, so a slow server or a busy
   generator cannot hide queueing (no coordinated omission). ``GET /health`` gets the same rate,
   as the floor of the generator plus HTTP.
6. **Batch.** ``POST /v1/eligibility/batch`` with 10,000 and 100,000 subjects, one request at a
   time over one persistent connection (httpx); decisions/s = subjects / wall time from sending
   the (pre-encoded) body to having read the whole answer.
7. ``--profile`` then samples the server with py-spy (``pip install py-spy``) during a closed-loop
   check run and during repeated 100,000-subject batches, and writes the collapsed stacks and a
   summary (the share of the endpoint's samples each function below it is on) to the workdir.

The server and the load generators share the machine (2 cores here): every figure is for that
setup, not for a server with the machine to itself. Results go to the console (Rich tables), to
``<workdir>/http-results-<residents>-<years>-<seed>.json`` and, as a Markdown table row, to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from civiscore.settings import Settings
from civiscore.synth.city import DEFAULT_END, write_city
from civiscore.workspace import Workspace

console = Console(stderr=True, highlight=False)

SERVICE = "high_speed_rail"
KEY_NAME = "bench-rail-ticketing"
CITY_MANIFEST = "bench-city.json"  # the same manifest as bench/score_bench.py writes
HOME_MANIFEST = "bench-home.json"
# The operational database and the audit anchor as they were right after the key was made;
# every run starts from this copy, so the access and audit logs do not grow from run to run.
START_STATE = ("operational.db", "audit-heads.jsonl")
START_SUFFIX = ".bench-start"
# Bounds on every loop, whatever the arguments say.
SERVER_START_SECONDS = 900.0
MAX_OPEN_LOOP_REQUESTS = 200_000
MAX_BATCH_REQUESTS = 20
WRK_INSTALL = "apt-get update && apt-get install -y wrk"


# --- helpers ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def source_version() -> str:
    """The commit measured (``git describe --always --dirty``), or ``unknown``."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, nearest rank.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


# --- 1. the city and the home ----------------------------------------------------------------


@dataclass
class Home:
    path: Path
    key: str
    records: int
    residents: Path
    build_seconds: float | None  # None when reused


def city(workdir: Path, residents: int, years: int, seed: int) -> tuple[Path, dict[str, Path]]:
    """The synthetic city for these arguments (made now or reused): its directory and files."""
    out = workdir / f"city-{residents}-{years}-{seed}"
    params = {"residents": residents, "years": years, "seed": seed, "end": str(DEFAULT_END)}
    manifest = out / CITY_MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        paths = {d: out / name for d, name in saved.get("departments", {}).items()}
        files_there = all(p.exists() for p in paths.values())
        if saved.get("params") == params and files_there and (out / "residents.parquet").exists():
            console.print(f"reusing the synthetic city in {out}")
            return out, paths
    if out.exists():
        shutil.rmtree(out)
    console.print(f"synthesising {residents:,} residents over {years} years (seed {seed}) ...")
    files = write_city(out, residents=residents, years=years, seed=seed, end=DEFAULT_END)
    manifest.write_text(
        json.dumps(
            {
                "params": params,
                "departments": {d: p.name for d, p in files.departments.items()},
                "rows": files.rows,
                "bad_rows": files.bad_rows,
            },
            indent=2,
        )
    )
    return out, dict(files.departments)


def home(workdir: Path, residents: int, years: int, seed: int) -> Home:
    """A home with the city ingested and a service key for high_speed_rail (made or reused)."""
    town, departments = city(workdir, residents, years, seed)
    path = workdir / f"http-home-{residents}-{years}-{seed}"
    params = {"residents": residents, "years": years, "seed": seed, "end": str(DEFAULT_END)}
    manifest = path / HOME_MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        kept = all((path / (name + START_SUFFIX)).exists() for name in START_STATE)
        if saved.get("params") == params and (path / "store.duckdb").exists() and kept:
            console.print(f"reusing the home {path}")
            restore_start_state(path)
            return Home(path, saved["key"], saved["records"], town / "residents.parquet", None)
    if path.exists():
        shutil.rmtree(path)
    start = time.perf_counter()
    ws, init = Workspace.init(path)
    try:
        console.print(f"home {path}: rulebook {init.rulebook_version}")
        for dep, file in sorted(departments.items()):
            t0 = time.perf_counter()
            summary = ws.ingest(dep, file)
            console.print(
                f"  ingest {dep:<14} {summary.rows:>11,} rows {time.perf_counter() - t0:7.2f} s"
            )
        records = int(ws.store.con.execute("SELECT count(*) FROM records").fetchall()[0][0])
    finally:
        ws.close()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "civiscore",
            "keys",
            "create",
            "--role",
            "service",
            "--name",
            KEY_NAME,
            "--service",
            SERVICE,
            "--json",
        ],
        env={**os.environ, "CIVISCORE_HOME": str(path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if made.returncode != 0:
        raise RuntimeError(f"civiscore keys create failed: {made.stderr.strip()}")
    key = str(json.loads(made.stdout)["key"])
    seconds = time.perf_counter() - start
    # The key stays in the git-ignored workdir: it opens a throwaway benchmark home only.
    for name in START_STATE:
        shutil.copy2(path / name, path / (name + START_SUFFIX))
    manifest.write_text(json.dumps({"params": params, "key": key, "records": records}, indent=2))
    return Home(path, key, records, town / "residents.parquet", seconds)


def restore_start_state(path: Path) -> None:
    """Put back the operational database and anchor file as they were when the home was made."""
    for suffix in ("-wal", "-shm"):
        (path / f"operational.db{suffix}").unlink(missing_ok=True)
    for name in START_STATE:
        shutil.copy2(path / (name + START_SUFFIX), path / name)


def log_sizes(path: Path) -> dict[str, int]:
    """Rows in the access and audit logs of the home (read with the server stopped)."""
    con = sqlite3.connect(f"file:{path / 'operational.db'}?mode=ro", uri=True)
    try:
        return {
            table: int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
            for table in ("access_log", "audit_log")
        }
    finally:
        con.close()


# --- 2. the server ---------------------------------------------------------------------------


class Server:
    """``civiscore serve`` as a child process; :meth:`stop` ends it (and only it)."""

    def __init__(self, home: Path, log: Path):
        self.home = home
        self.log_path = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def start(self) -> None:
        env = {
            **os.environ,
            "CIVISCORE_HOME": str(self.home),
            # Out of the way: the benchmark measures the server, not the limiter's refusals.
            "CIVISCORE_RATE_LIMIT_PER_SECOND": "1000000000",
            "CIVISCORE_RATE_LIMIT_BURST": "1000000000",
        }
        cmd = [sys.executable, "-m", "civiscore", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port)]
        console.print(f"starting: CIVISCORE_HOME={self.home} {' '.join(cmd[1:])}")
        start = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"civiscore serve exited with {self.proc.returncode} before answering; "
                    f"its output ends:\n{self._log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.start_seconds = time.perf_counter() - start
                    console.print(f"server up on {self.url} in {self.start_seconds:.1f} s")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(
            f"civiscore serve did not answer /health within {SERVER_START_SECONDS:.0f} s; "
            f"its output ends:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no output)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory so far (VmHWM)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                console.print(f"server stopped ({sig.name})")
                return
            except subprocess.TimeoutExpired:
                continue


# --- 3. subjects -----------------------------------------------------------------------------


@dataclass
class Subjects:
    ids: list[str]  # the round-robin list for single checks
    denied: int  # how many of them are listed (denied high_speed_rail)
    sampled: int  # residents asked to find the listed ones
    sampled_denied: int
    population: list[str]  # resident IDs for the batches, shuffled


def subjects(
    client: httpx.Client, residents: Path, n_ids: int, denied_share: float, max_batch: int
) -> Subjects:
    """A shuffled list of resident IDs with ``denied_share`` listed ones (as far as there are)."""
    rng = random.Random(0)
    all_ids = pq.read_table(residents, columns=["subject_id"]).column("subject_id").to_pylist()
    rng.shuffle(all_ids)
    sample = all_ids[: min(len(all_ids), max(n_ids * 10, 100_000))]
    denied: list[str] = []
    allowed: list[str] = []
    for i in range(0, len(sample), max_batch):
        chunk = sample[i : i + max_batch]
        r = client.post("/v1/eligibility/batch", json={"service": SERVICE, "subject_ids": chunk})
        r.raise_for_status()
        for sid, res in zip(chunk, r.json()["results"], strict=True):
            (allowed if res["allowed"] else denied).append(sid)
    want_denied = min(len(denied), round(n_ids * denied_share))
    ids = denied[:want_denied] + allowed[: n_ids - want_denied]
    rng.shuffle(ids)
    console.print(
        f"{len(denied):,} of {len(sample):,} sampled residents are listed for {SERVICE}; "
        f"single checks cycle through {len(ids):,} IDs, {want_denied:,} of them listed"
    )
    return Subjects(ids, want_denied, len(sample), len(denied), all_ids)


# --- 4. saturation with wrk ------------------------------------------------------------------

_WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,' ..
    '"max_us":%.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_scripts(workdir: Path, key: str, ids: list[str]) -> tuple[Path, Path]:
    """Lua scripts for wrk: GET /health, and POST /check round-robin over ``ids``."""
    health = workdir / "wrk-health.lua"
    health.write_text(_WRK_DONE)
    check = workdir / "wrk-check.lua"
    lua_ids = ",\n".join(json.dumps(i) for i in ids)
    check.write_text(
        f"""-- generated by bench/http_bench.py: POST /v1/eligibility/check, round-robin IDs
local ids = {{
{lua_ids}
}}
local requests = {{}}
local n = #ids
local i = 0

init = function(args)
  for k = 1, n do
    requests[k] = wrk.format("POST", "/v1/eligibility/check", {{
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer {key}",
    }}, '{{"subject_id":"' .. ids[k] .. '","service":"{SERVICE}"}}')
  end
end

request = function()
  i = i % n + 1
  return requests[i]
end
{_WRK_DONE}"""
    )
    return health, check


@dataclass
class WrkRun:
    command: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: dict[str, int]
    load_average: list[float]
    server_cores: float  # server CPU seconds per wall second during the run
    wrk_cores: float  # the load generator's, likewise


def run_wrk(
    server: Server,
    path: str,
    script: Path,
    *,
    duration: float,
    connections: int,
    threads: int,
    label: str,
) -> WrkRun:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url + path,
    ]
    cpu0, kids0, wall0 = server.cpu_seconds(), _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    wall = time.perf_counter() - wall0
    server_cores = (server.cpu_seconds() - cpu0) / wall
    wrk_cores = (_children_cpu() - kids0) / wall
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    d = json.loads(match.group(1))
    seconds = d["duration_us"] / 1e6
    errors = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout")}
    run = WrkRun(
        " ".join(cmd),
        int(d["requests"]),
        seconds,
        d["requests"] / seconds,
        d["p50_us"] / 1e3,
        d["p99_us"] / 1e3,
        d["mean_us"] / 1e3,
        errors,
        load_average(),
        server_cores,
        wrk_cores,
    )
    bad = sum(errors.values())
    console.print(
        f"  {label:<28} {run.rps:10,.0f} req/s  p50 {run.p50_ms:7.2f} ms  "
        f"p99 {run.p99_ms:7.2f} ms  server {server_cores:.2f} cores, wrk {wrk_cores:.2f}  "
        f"({run.requests:,} requests" + (f", [red]{bad:,} errors {errors}[/]" if bad else "") + ")"
    )
    return run


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- 5. open-loop latency --------------------------------------------------------------------


@dataclass
class OpenLoopRun:
    target_rate: float
    achieved_rate: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    dispatch_lag_p99_ms: float  # how late the generator itself put requests on the queue
    connections: int
    seconds: float
    server_cores: float = 0.0


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(length)
    return status


async def _open_loop(
    port: int, requests: list[bytes], rate: float, duration: float, connections: int
) -> OpenLoopRun:
    n = max(1, min(int(rate * duration), MAX_OPEN_LOOP_REQUESTS))
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (item := await queue.get()) is not None:
                due, req = item
                try:
                    writer.write(req)
                    status = await asyncio.wait_for(_read_response(reader), 10)
                except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - due)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # let the connections open
    start = time.perf_counter() + 0.05
    i = 0
    while i < n:
        now = time.perf_counter()
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # Everything due by now goes out; latency counts from ``due``, not from now.
        while i < n and start + i / rate <= now:
            queue.put_nowait((start + i / rate, requests[i % len(requests)]))
            lags.append(now - (start + i / rate))
            i += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=duration + 60)
    elapsed = time.perf_counter() - start
    latencies.sort()
    lags.sort()
    return OpenLoopRun(
        target_rate=rate,
        achieved_rate=len(latencies) / elapsed,
        requests=len(latencies),
        errors=errors,
        p50_ms=percentile(latencies, 50) * 1e3,
        p90_ms=percentile(latencies, 90) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        max_ms=latencies[-1] * 1e3 if latencies else float("nan"),
        dispatch_lag_p99_ms=percentile(lags, 99) * 1e3,
        connections=connections,
        seconds=elapsed,
    )


def open_loop(
    server: Server,
    requests: list[bytes],
    rate: float,
    duration: float,
    connections: int,
    label: str,
) -> OpenLoopRun:
    cpu0 = server.cpu_seconds()
    run = asyncio.run(_open_loop(server.port, requests, rate, duration, connections))
    run.server_cores = (server.cpu_seconds() - cpu0) / run.seconds
    console.print(
        f"  {label:<28} {run.achieved_rate:8,.0f} req/s (asked {run.target_rate:,.0f})  "
        f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  max {run.max_ms:7.1f} ms  "
        f"generator lag p99 {run.dispatch_lag_p99_ms:.1f} ms"
        + (f"  [red]{run.errors} errors[/]" if run.errors else "")
    )
    return run


# --- 6. batches ------------------------------------------------------------------------------


@dataclass
class BatchRun:
    subjects: int
    requests: int
    seconds: list[float]
    decisions_per_second: float
    request_bytes: int
    response_bytes: int
    client_decode_seconds: float  # json parsing of one answer in this process, not timed above
    denied: int


def run_batches(
    client: httpx.Client, population: list[str], size: int, count: int, budget: float
) -> BatchRun:
    ids = [population[i % len(population)] for i in range(size)]
    body = json.dumps({"service": SERVICE, "subject_ids": ids}).encode()
    headers = {"Content-Type": "application/json"}
    warm = client.post("/v1/eligibility/batch", content=body, headers=headers)
    warm.raise_for_status()
    times: list[float] = []
    content = b""
    deadline = time.monotonic() + budget
    for _ in range(min(count, MAX_BATCH_REQUESTS)):
        t0 = time.perf_counter()
        r = client.post("/v1/eligibility/batch", content=body, headers=headers)
        content = r.content
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        if time.monotonic() > deadline:
            break
    t0 = time.perf_counter()
    results = json.loads(content)["results"]
    decode = time.perf_counter() - t0
    if len(results) != size:
        raise RuntimeError(f"batch of {size} answered {len(results)} results")
    run = BatchRun(
        size,
        len(times),
        [round(t, 4) for t in times],
        size * len(times) / sum(times),
        len(body),
        len(content),
        decode,
        sum(1 for x in results if not x["allowed"]),
    )
    console.print(
        f"  batch of {size:>7,}: {run.decisions_per_second:10,.0f} decisions/s "
        f"(requests {', '.join(f'{t:.3f}' for t in times)} s; {len(body) / 2**20:.1f} MiB in, "
        f"{len(content) / 2**20:.1f} MiB out)"
    )
    return run


# --- 7. profiles -----------------------------------------------------------------------------


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def sampling(pid: int, seconds: float, out: Path) -> Iterator[None]:
    """py-spy records ``pid`` for ``seconds`` while the body runs (collapsed stacks to ``out``)."""
    exe = py_spy()
    assert exe is not None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    cmd += ["--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
        if proc.returncode != 0 or not out.exists():
            console.print(f"[red]py-spy failed:[/] {err.decode(errors='replace').strip()}")


def summarise_profile(path: Path, endpoint: str, top: int = 25) -> dict[str, Any]:
    """Where an endpoint's samples go: the share of them each function below it is on.

    ``endpoint`` is the route function's name in ``civiscore/api/routes/eligibility.py``. py-spy
    samples threads that are running or blocked in C (SQLite, fsync, lock waits), so a share
    is wall-clock time in that function, not CPU time. ``self_pct`` is the innermost frame.
    """
    root = re.compile(rf"^{re.escape(endpoint)} \(.*api/routes/eligibility\.py\)$")
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = inside = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]  # [0]: thread
        at = next((i for i, f in enumerate(frames) if root.match(f)), None)
        if at is None:
            continue
        inside += count
        for f in set(frames[at:]):
            inclusive[f] += count
        own[frames[-1]] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / max(inside, 1), 1)) for f, c in counter.most_common(top)]

    return {
        "endpoint": endpoint,
        "samples": total,
        "endpoint_samples": inside,
        "inclusive_pct": share(inclusive),
        "self_pct": share(own),
    }


def print_profile(title: str, summary: dict[str, Any]) -> None:
    t = Table(
        title=f"{title}: {summary['endpoint_samples']:,} samples in the endpoint "
        f"(of {summary['samples']:,}; py-spy, 200 Hz)"
    )
    t.add_column("% of endpoint", justify="right")
    t.add_column("function (file)")
    for name, pct in summary["inclusive_pct"]:
        t.add_row(f"{pct:.1f}", _short(name))
    console.print(t)
    s = Table(title=f"{title}: innermost frame")
    s.add_column("% of endpoint", justify="right")
    s.add_column("function (file)")
    for name, pct in summary["self_pct"][:15]:
        s.add_row(f"{pct:.1f}", _short(name))
    console.print(s)


def _short(frame: str) -> str:
    return re.sub(r"\(/.*?/(site-packages|lib/python3\.\d+|src)/", "(", frame)


# --- report ----------------------------------------------------------------------------------


@dataclass
class Results:
    residents: int
    years: int
    seed: int
    records: int
    machine: dict[str, Any]
    server_start_seconds: float
    connections: int
    wrk_threads: int
    duration: float
    single_ids: int
    single_ids_denied: int
    sampled_listed: dict[str, int]
    health: WrkRun
    check: WrkRun
    check_one_connection: WrkRun
    latency_check: OpenLoopRun
    latency_health: OpenLoopRun
    batches: list[BatchRun]
    profiles: dict[str, Any] = field(default_factory=dict)
    server_peak_rss_mib: float | None = None
    commit: str = ""
    started_at: str = ""
    logs_after: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.check.rps / self.health.rps

    def batch(self, size: int) -> str:
        runs = [b for b in self.batches if b.subjects == size]
        return f"{runs[0].decisions_per_second:,.0f}" if runs else "n/a"

    def markdown_header(self) -> str:
        return (
            "| residents | records | /health req/s | /check req/s | check/health "
            "| latency rate (req/s) | check p50 (ms) | check p99 (ms) | /health p50/p99 (ms) "
            "| batch 10k (decisions/s) | batch 100k (decisions/s) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )

    def markdown_row(self) -> str:
        lc, lh = self.latency_check, self.latency_health
        return (
            f"| {self.residents:,} | {self.records:,} | {self.health.rps:,.0f} "
            f"| {self.check.rps:,.0f} | {self.ratio:.2f} | {lc.target_rate:,.0f} "
            f"| {lc.p50_ms:.1f} | {lc.p99_ms:.1f} | {lh.p50_ms:.1f} / {lh.p99_ms:.1f} "
            f"| {self.batch(10_000)} | {self.batch(100_000)} |"
        )


def report(res: Results) -> None:
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    t = Table(title=f"eligibility over HTTP: {res.residents:,} residents, {res.records:,} records")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")

    def met(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]not met[/]"

    lc, lh = res.latency_check, res.latency_health

    def wrk(run: WrkRun) -> str:
        return f"{run.rps:,.0f} req/s (server {run.server_cores:.2f} cores)"

    rows = [
        (f"GET /health, closed loop, {res.connections} connections", wrk(res.health), ""),
        (f"POST check, closed loop, {res.connections} connections", wrk(res.check), ""),
        ("POST check, closed loop, 1 connection", wrk(res.check_one_connection), ""),
        ("check / health", f"{res.ratio:.2f}", f"≥ 0.5 {met(res.ratio >= 0.5)}"),
        (
            "check latency, closed loop p50 / p99",
            f"{res.check.p50_ms:.1f} / {res.check.p99_ms:.1f} ms",
            "",
        ),
        (
            f"check latency, open loop at {lc.target_rate:,.0f} req/s: p50 / p90 / p99",
            f"{lc.p50_ms:.1f} / {lc.p90_ms:.1f} / {lc.p99_ms:.1f} ms",
            f"p99 < 20 ms {met(lc.p99_ms < 20)}",
        ),
        (
            f"/health latency, open loop at {lh.target_rate:,.0f} req/s: p50 / p90 / p99",
            f"{lh.p50_ms:.1f} / {lh.p90_ms:.1f} / {lh.p99_ms:.1f} ms",
            "",
        ),
    ]
    rows += [
        (
            f"batch of {b.subjects:,} ({b.requests} requests)",
            f"{b.decisions_per_second:,.0f} decisions/s",
            f"100,000 {met(b.decisions_per_second >= 100_000)}",
        )
        for b in res.batches
    ]
    rss = res.server_peak_rss_mib
    rows.append(
        (
            "server start (to /health) / peak RSS",
            f"{res.server_start_seconds:.1f} s / " + ("n/a" if rss is None else f"{rss:,.0f} MiB"),
            "",
        )
    )
    for row in rows:
        t.add_row(*row)
    out.print(t)
    out.print()
    out.print(res.markdown_header(), markup=False, soft_wrap=True)
    out.print(res.markdown_row(), markup=False, soft_wrap=True)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--residents", type=int, default=100_000)
    p.add_argument("--years", type=int, default=8, help="record window of the synthetic city")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("bench/out"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=32, help="wrk and open-loop connections")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--ids", type=int, default=10_000, help="IDs single checks cycle through")
    p.add_argument("--denied-share", type=float, default=0.1, help="share of listed IDs in them")
    p.add_argument(
        "--batch-sizes", default="10000,100000", help="subjects per batch request, comma-separated"
    )
    p.add_argument("--batch-requests", type=int, default=5, help="timed requests per batch size")
    p.add_argument("--profile", action="store_true", help="sample the server with py-spy too")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 300:
        p.error("--duration is seconds per measurement, in (0, 300]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        console.print(
            "[red]wrk is not installed[/]: this benchmark drives the server with it. "
            f"On Debian or Ubuntu: `{WRK_INSTALL}` (as root), then run this again."
        )
        return 2
    if args.profile and py_spy() is None:
        console.print("[red]--profile needs py-spy[/]: `.venv/bin/pip install py-spy`")
        return 2
    # SIGTERM ends the run like Ctrl-C does, so the server is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.residents}-{args.years}-{args.seed}"
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")

    console.rule("home")
    h = home(workdir, args.residents, args.years, args.seed)
    console.print(f"{h.records:,} records in {h.path}; logs at the start: {log_sizes(h.path)}")

    console.rule("server")
    server = Server(h.path, workdir / f"http-server-{tag}.log")
    try:
        server.start()
        res = measure(server, h, args, workdir, tag)
    finally:
        server.stop()
    res.started_at = started
    res.commit = source_version()
    res.logs_after = log_sizes(h.path)

    out = workdir / f"http-results-{tag}.json"
    data = asdict(res)
    data["check_over_health"] = res.ratio
    data["median_batch_seconds"] = {
        b.subjects: statistics.median(b.seconds) for b in res.batches if b.seconds
    }
    out.write_text(json.dumps(data, indent=2, default=str))
    console.print(f"results written to {out}")
    report(res)
    return 0


def measure(server: Server, h: Home, args: argparse.Namespace, workdir: Path, tag: str) -> Results:
    """Every measurement, against a running server."""
    headers = {"Authorization": f"Bearer {h.key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=300) as client:
        max_batch = Settings.from_env().max_batch_checks
        who = subjects(client, h.residents, args.ids, args.denied_share, max_batch)
        health_lua, check_lua = wrk_scripts(workdir, h.key, who.ids)
        check_path = "/v1/eligibility/check"

        console.rule("saturation (wrk, closed loop)")
        kw: dict[str, Any] = {"connections": args.connections, "threads": args.wrk_threads}
        warm = min(3.0, args.duration)
        run_wrk(server, "/health", health_lua, duration=warm, label="warm-up", **kw)
        health = run_wrk(
            server, "/health", health_lua, duration=args.duration, label="GET /health", **kw
        )
        run_wrk(server, check_path, check_lua, duration=warm, label="warm-up", **kw)
        check = run_wrk(
            server, check_path, check_lua, duration=args.duration, label="POST check", **kw
        )
        # One connection: the cost of a check when requests never overlap.
        check_one = run_wrk(
            server,
            check_path,
            check_lua,
            duration=args.duration,
            label="POST check, 1 connection",
            connections=1,
            threads=1,
        )

        console.rule("latency at half the check saturation (open loop)")
        rate = check.rps / 2
        auth = {"Authorization": f"Bearer {h.key}", "Content-Type": "application/json"}
        check_requests = [
            http_request(
                "POST", check_path, auth, json.dumps({"subject_id": i, "service": SERVICE}).encode()
            )
            for i in who.ids
        ]
        lat_check = open_loop(
            server, check_requests, rate, args.duration, args.connections, "POST check"
        )
        lat_health = open_loop(
            server,
            [http_request("GET", "/health", {})],
            rate,
            args.duration,
            args.connections,
            "GET /health",
        )

        console.rule("batches (one persistent connection, sequential)")
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
        batches = [
            run_batches(client, who.population, size, args.batch_requests, args.duration * 3)
            for size in sizes
        ]

        profiles: dict[str, Any] = {}
        if args.profile:
            console.rule("profiles (py-spy on the server)")
            raw = workdir / f"http-profile-check-{tag}.txt"
            with sampling(server.pid, args.duration, raw):
                run_wrk(
                    server,
                    check_path,
                    check_lua,
                    duration=args.duration,
                    label="check, while profiled",
                    **kw,
                )
            profiles["check"] = summarise_profile(raw, "check")
            print_profile("POST /v1/eligibility/check", profiles["check"])
            raw = workdir / f"http-profile-batch-{tag}.txt"
            big = max(sizes)
            with sampling(server.pid, args.duration, raw):
                run_batches(client, who.population, big, MAX_BATCH_REQUESTS, args.duration)
            profiles["batch"] = summarise_profile(raw, "check_batch")
            print_profile(f"POST /v1/eligibility/batch ({big:,})", profiles["batch"])

    return Results(
        residents=args.residents,
        years=args.years,
        seed=args.seed,
        records=h.records,
        machine=machine(),
        server_start_seconds=server.start_seconds,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        duration=args.duration,
        single_ids=len(who.ids),
        single_ids_denied=who.denied,
        sampled_listed={"sampled": who.sampled, "listed": who.sampled_denied},
        health=health,
        check=check,
        check_one_connection=check_one,
        latency_check=lat_check,
        latency_health=lat_health,
        batches=batches,
        profiles=profiles,
        server_peak_rss_mib=server.peak_rss_mib(),
    )


if __name__ == "__main__":
    sys.exit(main())
