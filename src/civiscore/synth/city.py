"""A deterministic synthetic city: residents, organisations and department record files.

:func:`write_city` writes what a city's departments would send civiscore, in the formats they
would send it, for the demo rulebook (``rulebook/data/demo.yaml``): one file per department with
the columns ``record_id, subject_id, kind, occurred_at, quantity, reference, retracts``, plus
``residents.parquet`` and ``organisations.parquet`` describing the subjects for the policy-lab
report (the rules never see those attributes).

Everything is drawn from ``numpy.random.Generator(PCG64(...))`` seeded by ``(seed, chunk, stream)``,
so a seed always gives the same rows. Subjects are generated and written in chunks of
:data:`CHUNK_SUBJECTS`, so memory stays bounded for tens of millions of residents; every step
inside a chunk is vectorised (no Python loop per record).

Subjects
--------
* Residents: valid GB 11643 identity numbers in Beijing's 16 districts, weighted by the 2020
  census population (Chaoyang 16 %, Haidian 14 %, ... Yanqing 1.6 %). Ages 18-85 at ``end``:
  18-29 19 %, 30-44 31 %, 45-59 27 %, 60+ 23 % (thinning linearly towards 85). Income deciles are
  uniform 1-10. Rural hukou: 2 % in Dongcheng and Xicheng, 5 % in the other urban-core districts,
  25 % in the outer districts. The sequence code comes from a running count per (district, birth
  date), so IDs are unique.
* Organisations (default ``max(10, residents // 20)``): valid GB 32100 codes ``91`` + district
  code + a 9-character organisation code (a letter, 7 characters and a GB 11714 check) + check
  character; the organisation code is an affine bijection of the organisation's index, so codes
  are unique, and the letter keeps a credit code from ever reading as a resident ID.
  Sectors: wholesale/retail 24 %, business services 16 %, IT 14 %, and seven smaller ones.

Behaviour (illustrative rates, events per subject-year unless noted)
--------------------------------------------------------------------
===========================  ============================================  ======================
kind                         residents                                     organisations
===========================  ============================================  ======================
transport.speeding           drivers (40/65/55/30 % by age band) with a    --
                             personal rate ~ Gamma(1, 0.8); percent over:
                             80 % 5-19, 17 % 20-49, 3 % 50-100
transport.drunk_driving      0.1 % of drivers                              --
transport.fare_evasion       habitual evaders (3 % in deciles 1-3, 2 % in  --
                             4-7, 1 % in 8-10) 4.0; everyone else 0.3 %
tourism.uncivil_conduct      0.2 %                                         --
court.judgment_default       0.5 %; CNY owed ~ lognormal, median 60,000    1 %; median 400,000
court.judgment_settled       40 % of defaults, later, same reference       same
tax.late_filing              1.5 %                                         6 %
tax.evasion_decision         0.01 %; CNY evaded median 200,000             0.3 %; median 2 million
market.false_advertising     --                                            1.5 %
market.contract_breach       0.2 %                                         2 %
market.serious_violation     --                                            0.2 %
civic.volunteer_hours        very active volunteers (4/2/2.5/5 % by age    --
                             band) 12 records of median 6 h; occasional
                             (15 %) 1.5 records of median 3 h
civic.heroic_act             0.02 %                                        --
civic.charitable_donation    2 % + 1.2 % x income decile; median CNY       10 %; median CNY 5,000
                             100 x (1 + decile / 4)
civic.blood_donation         regular donors (3/3/2/0.5 % by age band)      --
                             2.5; occasional (5 %, 1 % if 60+) 0.4
===========================  ============================================  ======================

Very active volunteers earn the yearly merit cap, so a few percent of residents reach AA/AAA.
Resident records start at the later of the window start and the resident's 18th birthday.
Decisions are timed in office hours, other conduct in waking hours.

Data quality, as real department exports have it
------------------------------------------------
* ``occurred_at`` is ISO 8601 local time (``2024-03-05T14:22:00``, Asia/Shanghai); 2 % of rows
  are date-only and 3 % carry an explicit ``+08:00``. All fall on days in ``[end - years, end]``,
  ``end`` included.
* 0.5 % of records are retracted by a later record (at least a day later) with a new
  ``record_id``, ``retracts`` = the original's ``record_id``, same subject, kind, quantity and
  reference; 40 % of those are corrections, followed within the hour by a replacement record
  (same subject, kind and reference; a quantity scaled by 0.6-1.0).
* A ``bad_rows`` share of each department's rows is corrupted in place, split evenly between: a
  wrong check character in ``subject_id`` (invalid as either kind of ID), an unknown kind, an
  empty or absent ``record_id``/``subject_id``/``kind``, and an unparseable ``occurred_at``.
  Rows that others point at (retracted records, settled judgments) are left intact, so every
  good reference resolves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from civiscore.ids import RESIDENT_CHECK, RESIDENT_WEIGHTS, USCC_ALPHABET, USCC_WEIGHTS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ByteMatrix = npt.NDArray[np.uint8]

DEFAULT_END: Final = dt.date(2026, 10, 31)

# Subjects per chunk: bounds memory (a chunk of 200,000 residents makes about a million rows) and,
# being a constant, keeps the output independent of anything but the arguments.
CHUNK_SUBJECTS: Final = 200_000

DEPARTMENT_FORMATS: dict[str, str] = {
    "courts": "csv",
    "transport": "parquet",
    "tourism": "jsonl",
    "market": "csv",
    "tax": "jsonl",
    "civil_affairs": "csv",
    "blood_service": "parquet",
}

RECORD_COLUMNS: Final = (
    "record_id",
    "subject_id",
    "kind",
    "occurred_at",
    "quantity",
    "reference",
    "retracts",
)

# Strings everywhere but quantity, so a malformed date survives into the file as written.
RECORD_SCHEMA: Final = pa.schema(
    [(name, pa.float64() if name == "quantity" else pa.string()) for name in RECORD_COLUMNS]
)
RESIDENT_SCHEMA: Final = pa.schema(
    [
        ("subject_id", pa.string()),
        ("district", pa.string()),
        ("birth_date", pa.date32()),
        ("age_band", pa.string()),
        ("income_decile", pa.int16()),
        ("hukou", pa.string()),
    ]
)
ORGANISATION_SCHEMA: Final = pa.schema(
    [("subject_id", pa.string()), ("district", pa.string()), ("sector", pa.string())]
)

# (region code, name, 2020 census population in 10,000s, share with a rural hukou)
DISTRICTS: Final = (
    (110101, "Dongcheng", 71, 0.02),
    (110102, "Xicheng", 110, 0.02),
    (110105, "Chaoyang", 345, 0.05),
    (110106, "Fengtai", 202, 0.05),
    (110107, "Shijingshan", 57, 0.05),
    (110108, "Haidian", 313, 0.05),
    (110109, "Mentougou", 39, 0.25),
    (110111, "Fangshan", 131, 0.25),
    (110112, "Tongzhou", 184, 0.25),
    (110113, "Shunyi", 132, 0.25),
    (110114, "Changping", 227, 0.25),
    (110115, "Daxing", 199, 0.25),
    (110116, "Huairou", 44, 0.25),
    (110117, "Pinggu", 46, 0.25),
    (110118, "Miyun", 53, 0.25),
    (110119, "Yanqing", 35, 0.25),
)

# (label, youngest age, oldest age, share of adults)
AGE_BANDS: Final = (
    ("18-29", 18, 29, 0.19),
    ("30-44", 30, 44, 0.31),
    ("45-59", 45, 59, 0.27),
    ("60+", 60, 85, 0.23),
)

SECTORS: Final = (
    ("wholesale_retail", 0.24),
    ("business_services", 0.16),
    ("information_technology", 0.14),
    ("construction", 0.09),
    ("manufacturing", 0.08),
    ("hospitality", 0.08),
    ("transport_logistics", 0.06),
    ("real_estate", 0.06),
    ("finance", 0.04),
    ("education_culture", 0.05),
)

RECORD_ID_PREFIX: Final = {
    "courts": "CRT",
    "transport": "TRN",
    "tourism": "TOU",
    "market": "MKT",
    "tax": "TAX",
    "civil_affairs": "CIV",
    "blood_service": "BLD",
}

# Department -> kinds, in the order their random streams are numbered; mirrors demo.yaml (a test
# keeps the two in step).
DEPARTMENT_KINDS: Final = {
    "courts": ("court.judgment_default", "court.judgment_settled"),
    "transport": ("transport.speeding", "transport.drunk_driving", "transport.fare_evasion"),
    "tourism": ("tourism.uncivil_conduct",),
    "market": ("market.false_advertising", "market.contract_breach", "market.serious_violation"),
    "tax": ("tax.late_filing", "tax.evasion_decision"),
    "civil_affairs": (
        "civic.volunteer_hours",
        "civic.heroic_act",
        "civic.charitable_donation",
    ),
    "blood_service": ("civic.blood_donation",),
}

# Reference numbers of decisions: "(year)" + head + [4-digit district] + tail + running number,
# after the Chinese numbering of judgments and penalty decisions (e.g. (2024)京0105执1234号).
REFERENCE_FORMATS: Final = {
    "court.judgment_default": ("Jing", True, "Zhi"),
    "tax.evasion_decision": ("JingShui", False, "JiFa"),
    "market.false_advertising": ("JingShiJian", True, "Fa"),
    "market.serious_violation": ("JingShiJian", False, "YanWei"),
}

# Hours of the day in which each kind happens: decisions in office hours, conduct while awake.
OFFICE_HOURS: Final = (9, 17)
WAKING_HOURS: Final = (6, 23)
DECISION_KINDS: Final = frozenset(
    {
        "court.judgment_default",
        "court.judgment_settled",
        "tax.late_filing",
        "tax.evasion_decision",
        "market.false_advertising",
        "market.contract_breach",
        "market.serious_violation",
    }
)

SETTLED_SHARE: Final = 0.40
RETRACTED_SHARE: Final = 0.005
CORRECTED_SHARE: Final = 0.40
DATE_ONLY_SHARE: Final = 0.02
OFFSET_SHARE: Final = 0.03
BAD_DATES: Final = ("2023-13-45", "yesterday", "2024-02-30T10:00:00", "31/02/2024")

DAY: Final = 86_400
# 18 years never span more than 6,575 days (18 x 365 + 5 leap days).
ADULT_DAYS: Final = 6_575
# Random streams within a chunk; kinds take 100 + their index in KIND_ORDER.
_STREAM_PERSONS, _STREAM_ORGS, _STREAM_TRAITS, _STREAM_DEPARTMENT = 0, 1, 2, 50
KIND_ORDER: Final = tuple(k for kinds in DEPARTMENT_KINDS.values() for k in kinds)

_RES_CHECK = np.frombuffer(RESIDENT_CHECK.encode("ascii"), dtype=np.uint8)
_USCC_ASCII = np.frombuffer(USCC_ALPHABET.encode("ascii"), dtype=np.uint8)
_RES_W = np.array(RESIDENT_WEIGHTS, dtype=np.int64)
_USCC_W = np.array(USCC_WEIGHTS, dtype=np.int64)
# GB 11714 organisation-code check: weights, and the value of each USCC character (A = 10 ...).
_ORG_W = np.array((3, 7, 9, 10, 5, 8, 4, 2), dtype=np.int64)
_ORG_VALUE = np.array([int(c, 36) for c in USCC_ALPHABET], dtype=np.int64)
# Organisation codes start with one of the 21 USCC letters (as the "MA..." codes issued since
# 2015 do), so a credit code can never also read as an all-digit resident ID; 7 more characters.
_ORG_SPACE: Final = 21 * 31**7
_ORG_MULTIPLIER: Final = 7_654_321  # coprime with 21 and 31, so index -> code is a bijection
_USCC_VALUE = np.zeros(256, dtype=np.int64)
_USCC_VALUE[_USCC_ASCII] = np.arange(31)
_ZERO = ord("0")
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode("ascii"), np.uint8).reshape(
    100, 2
)


@dataclass(frozen=True)
class CityFiles:
    """Where :func:`write_city` put the city, and how many rows each department got."""

    residents: Path
    organisations: Path
    departments: dict[str, Path]
    rows: dict[str, int]
    bad_rows: dict[str, int]


class _Writer(Protocol):
    def write_table(self, table: Any) -> None: ...

    def close(self) -> None: ...


def write_city(
    out: Path,
    *,
    residents: int,
    organisations: int | None = None,
    years: int = 5,
    seed: int = 0,
    bad_rows: float = 0.01,
    end: dt.date = DEFAULT_END,
    progress: Callable[[int], None] | None = None,
) -> CityFiles:
    """Generate a synthetic city into ``out`` and return where everything went.

    Args:
        out: Directory to write into; created if missing, existing files are overwritten.
        residents: Number of residents.
        organisations: Number of organisations; ``max(10, residents // 20)`` by default.
        years: Length of the record window, which ends with the day ``end``.
        seed: Seed; the same arguments always give the same rows.
        bad_rows: Share of each department's rows to corrupt, in ``[0, 1)``.
        end: Last day of records (included); ages are as of this day.
        progress: Called after each chunk with the number of subjects it generated; the
            calls add up to ``residents + organisations``.

    Returns:
        The paths written and the rows (and bad rows) per department.

    Raises:
        ValueError: An argument is out of range.
    """
    if organisations is None:
        organisations = max(10, residents // 20)
    if residents < 0 or organisations < 0:
        raise ValueError("residents and organisations must be zero or more")
    if years < 1:
        raise ValueError(f"years must be at least 1 (got {years})")
    if not 0 <= bad_rows < 1:
        raise ValueError(f"bad_rows is a share of rows in [0, 1) (got {bad_rows})")
    if organisations >= _ORG_SPACE:
        raise ValueError(f"at most {_ORG_SPACE - 1} organisations can have distinct codes")

    out.mkdir(parents=True, exist_ok=True)
    state = _State(seed=seed, end=end, years=years, bad_share=bad_rows)
    n_chunks = max(1, -(-residents // CHUNK_SUBJECTS), -(-organisations // CHUNK_SUBJECTS))
    files = CityFiles(
        residents=out / "residents.parquet",
        organisations=out / "organisations.parquet",
        departments={d: out / f"{d}.{fmt}" for d, fmt in DEPARTMENT_FORMATS.items()},
        rows=dict.fromkeys(DEPARTMENT_FORMATS, 0),
        bad_rows=dict.fromkeys(DEPARTMENT_FORMATS, 0),
    )
    with ExitStack() as stack:
        resident_writer = stack.enter_context(pq.ParquetWriter(files.residents, RESIDENT_SCHEMA))
        org_writer = stack.enter_context(pq.ParquetWriter(files.organisations, ORGANISATION_SCHEMA))
        writers = {d: _open_records(stack, p) for d, p in files.departments.items()}
        for chunk in range(n_chunks):
            r0, r1 = chunk * residents // n_chunks, (chunk + 1) * residents // n_chunks
            o0, o1 = chunk * organisations // n_chunks, (chunk + 1) * organisations // n_chunks
            people, resident_table = _make_residents(state, chunk, r1 - r0)
            orgs, org_table = _make_organisations(state, chunk, o0, o1 - o0)
            resident_writer.write_table(resident_table)
            org_writer.write_table(org_table)
            subjects = _Subjects.join(people, orgs, state)
            for department, table in _department_tables(state, chunk, people, orgs, subjects):
                writers[department].write_table(table)
                files.rows[department] += table.num_rows
            if progress is not None:
                progress((r1 - r0) + (o1 - o0))
    for department, count in state.bad_written.items():
        files.bad_rows[department] = count
    return files


# --- state carried across chunks -------------------------------------------------------------


@dataclass
class _State:
    """What chunks share: the window, and counters that keep IDs and numbers unique."""

    seed: int
    end: dt.date
    years: int
    bad_share: float
    start: dt.date = field(init=False)
    start_day: int = field(init=False)
    stop_day: int = field(init=False)  # the day after ``end``: records happen before it
    oldest_birth_day: int = field(init=False)
    birth_days: int = field(init=False)
    cell_counts: npt.NDArray[np.int32] = field(init=False)
    record_counters: dict[str, int] = field(init=False)
    reference_counters: dict[str, int] = field(init=False)
    bad_written: dict[str, int] = field(init=False)
    salt: int = field(init=False)  # scrambles sequence and organisation codes per seed

    def __post_init__(self) -> None:
        self.start = _years_before(self.end, self.years)
        self.start_day = _day_number(self.start)
        self.stop_day = _day_number(self.end) + 1
        self.oldest_birth_day = _day_number(_years_before(self.end, 86)) + 1
        self.birth_days = _day_number(_years_before(self.end, 18)) - self.oldest_birth_day + 1
        # Residents so far per (district, birth date): the next sequence code of that cell.
        self.cell_counts = np.zeros(len(DISTRICTS) * self.birth_days, dtype=np.int32)
        self.record_counters = dict.fromkeys(DEPARTMENT_FORMATS, 0)
        self.reference_counters = dict.fromkeys(REFERENCE_FORMATS, 0)
        self.bad_written = dict.fromkeys(DEPARTMENT_FORMATS, 0)
        self.salt = int(np.random.SeedSequence([self.seed]).generate_state(1)[0])

    def rng(self, chunk: int, stream: int) -> np.random.Generator:
        """The random generator of one stream of one chunk."""
        return np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([self.seed, chunk, stream]))
        )


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year - years, day=28)


def _day_number(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


# --- subjects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _People:
    district: IntArray
    birth_day: IntArray
    band: IntArray
    decile: IntArray
    ids: ByteMatrix


@dataclass(frozen=True)
class _Orgs:
    district: IntArray
    ids: ByteMatrix


@dataclass(frozen=True)
class _Subjects:
    """Persons then organisations of one chunk, indexed together."""

    ids: pa.Array  # valid IDs, then the same IDs with a wrong check character
    region: IntArray
    first_day: IntArray
    n: int

    @classmethod
    def join(cls, people: _People, orgs: _Orgs, state: _State) -> _Subjects:
        matrix = np.concatenate([people.ids, orgs.ids])
        bad = matrix.copy()
        bad[:, 17] = np.concatenate([_bad_resident_check(people.ids), _bad_uscc_check(orgs.ids)])
        ids = pa.concat_arrays([_ascii(matrix), _ascii(bad)])
        region = np.array([d[0] for d in DISTRICTS], dtype=np.int64)
        adult = people.birth_day + ADULT_DAYS
        first_day = np.concatenate(
            [np.maximum(adult, state.start_day), np.full(len(orgs.district), state.start_day)]
        )
        return cls(
            ids=ids,
            region=region[np.concatenate([people.district, orgs.district])],
            first_day=first_day.astype(np.int64),
            n=len(matrix),
        )


def _make_residents(state: _State, chunk: int, n: int) -> tuple[_People, pa.Table]:
    rng = state.rng(chunk, _STREAM_PERSONS)
    weights = np.array([d[2] for d in DISTRICTS], dtype=np.float64)
    district = rng.choice(len(DISTRICTS), size=n, p=weights / weights.sum()).astype(np.int64)
    band = rng.choice(len(AGE_BANDS), size=n, p=[b[3] for b in AGE_BANDS]).astype(np.int64)
    # Birth dates: uniform within a band, except 60+ which thins out linearly towards 85.
    youngest = np.array([_day_number(_years_before(state.end, b[1])) for b in AGE_BANDS])
    oldest = np.array([_day_number(_years_before(state.end, b[2] + 1)) + 1 for b in AGE_BANDS])
    span = (youngest - oldest + 1)[band]
    u = rng.random(n)
    u = np.where(band == len(AGE_BANDS) - 1, 1 - np.sqrt(1 - u), u)
    birth_day = youngest[band] - np.minimum((u * span).astype(np.int64), span - 1)
    decile = rng.integers(1, 11, size=n)
    rural_share = np.array([d[3] for d in DISTRICTS])[district]
    rural = rng.random(n) < rural_share

    seq = _sequence_codes(state, district, birth_day)
    ids = _resident_ids(district, birth_day, seq)
    people = _People(district=district, birth_day=birth_day, band=band, decile=decile, ids=ids)
    names = pa.array([d[1] for d in DISTRICTS])
    table = pa.table(
        {
            "subject_id": _ascii(ids),
            "district": names.take(pa.array(district)),
            "birth_date": pa.array(birth_day.astype(np.int32), type=pa.int32()).cast(pa.date32()),
            "age_band": pa.array([b[0] for b in AGE_BANDS]).take(pa.array(band)),
            "income_decile": pa.array(decile.astype(np.int16)),
            "hukou": pa.array(np.where(rural, "rural", "urban")),
        },
        schema=RESIDENT_SCHEMA,
    )
    return people, table


def _sequence_codes(state: _State, district: IntArray, birth_day: IntArray) -> IntArray:
    """Unique 3-digit sequence codes: a running count per (district, birth date), scrambled."""
    cell = district * state.birth_days + (birth_day - state.oldest_birth_day)
    order = np.argsort(cell, kind="stable")
    ranked = cell[order]
    index = np.arange(len(cell))
    is_first = np.ones(len(cell), dtype=bool)
    is_first[1:] = ranked[1:] != ranked[:-1]
    rank = np.empty(len(cell), dtype=np.int64)
    rank[order] = index - np.maximum.accumulate(np.where(is_first, index, 0))
    count = state.cell_counts[cell] + rank
    if len(count) and count.max() >= 1000:
        raise ValueError(
            "too many residents share a district and birth date for 3-digit sequence codes; "
            "generate fewer than about 100 million residents"
        )
    state.cell_counts += np.bincount(cell, minlength=len(state.cell_counts)).astype(np.int32)
    # 37 is coprime with 1000, so distinct counts give distinct codes within a cell.
    offset = (cell * 7_919 + state.salt) % 1000
    return np.asarray((offset + 37 * count) % 1000, dtype=np.int64)


def _resident_ids(district: IntArray, birth_day: IntArray, seq: IntArray) -> ByteMatrix:
    region = np.array([d[0] for d in DISTRICTS], dtype=np.int64)[district]
    days = birth_day.astype("datetime64[D]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    ids = np.empty((len(district), 18), dtype=np.uint8)
    ids[:, 0:6] = _digits(region, 6)
    ids[:, 6:14] = _digits(year * 10_000 + month * 100 + dom, 8)
    ids[:, 14:17] = _digits(seq, 3)
    ids[:, 17] = _RES_CHECK[((ids[:, :17] - _ZERO).astype(np.int64) @ _RES_W) % 11]
    return ids


def _make_organisations(state: _State, chunk: int, first: int, n: int) -> tuple[_Orgs, pa.Table]:
    rng = state.rng(chunk, _STREAM_ORGS)
    weights = np.array([d[2] for d in DISTRICTS], dtype=np.float64)
    district = rng.choice(len(DISTRICTS), size=n, p=weights / weights.sum()).astype(np.int64)
    sector = rng.choice(len(SECTORS), size=n, p=[s[1] for s in SECTORS])
    # An affine bijection of the global index gives unique, random-looking organisation codes.
    index = np.arange(first, first + n, dtype=np.int64)
    code = (index * _ORG_MULTIPLIER + state.salt % _ORG_SPACE) % _ORG_SPACE
    values = np.empty((n, 8), dtype=np.int64)
    # Least significant place first, so consecutive indexes differ in the leading character.
    values[:, 0] = 10 + code % 21  # a letter
    code //= 21
    for position in range(1, 8):  # 7 base-31 places, not a loop over records
        values[:, position] = code % 31
        code //= 31
    org_check = 11 - (_ORG_VALUE[values] @ _ORG_W) % 11
    org_check_char = np.where(
        org_check == 10, ord("X"), np.where(org_check == 11, _ZERO, _ZERO + org_check)
    )
    region = np.array([d[0] for d in DISTRICTS], dtype=np.int64)[district]
    ids = np.empty((n, 18), dtype=np.uint8)
    ids[:, 0] = ord("9")
    ids[:, 1] = ord("1")
    ids[:, 2:8] = _digits(region, 6)
    ids[:, 8:16] = _USCC_ASCII[values]
    ids[:, 16] = org_check_char
    ids[:, 17] = _USCC_ASCII[(31 - (_uscc_values(ids[:, :17]) @ _USCC_W) % 31) % 31]
    table = pa.table(
        {
            "subject_id": _ascii(ids),
            "district": pa.array([d[1] for d in DISTRICTS]).take(pa.array(district)),
            "sector": pa.array([s[0] for s in SECTORS]).take(pa.array(sector)),
        },
        schema=ORGANISATION_SCHEMA,
    )
    return _Orgs(district=district, ids=ids), table


def _uscc_values(chars: ByteMatrix) -> IntArray:
    return np.asarray(_USCC_VALUE[chars], dtype=np.int64)


def _bad_resident_check(ids: ByteMatrix) -> npt.NDArray[np.uint8]:
    """A check character that makes each resident ID fail both GB 11643 and GB 32100."""
    right = ((ids[:, :17] - _ZERO).astype(np.int64) @ _RES_W) % 11
    # The 17 digits are also USCC characters; the new character must not complete a valid code.
    as_uscc = _USCC_ASCII[(31 - (_uscc_values(ids[:, :17]) @ _USCC_W) % 31) % 31]
    first, second = _RES_CHECK[(right + 1) % 11], _RES_CHECK[(right + 2) % 11]
    return np.asarray(np.where(first == as_uscc, second, first), dtype=np.uint8)


def _bad_uscc_check(ids: ByteMatrix) -> npt.NDArray[np.uint8]:
    """A check character that makes each credit code fail GB 32100.

    The organisation code holds a letter, so the result cannot pass as a resident ID either.
    """
    right = (31 - (_uscc_values(ids[:, :17]) @ _USCC_W) % 31) % 31
    return np.asarray(_USCC_ASCII[(right + 1) % 31], dtype=np.uint8)


# --- behaviour -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How often each subject of a chunk does one kind of thing, and how much of it."""

    rate: FloatArray  # events per year, per subject (persons then organisations)
    quantity: Callable[[np.random.Generator, IntArray], FloatArray] | None = None


def _plans(state: _State, chunk: int, people: _People, orgs: _Orgs) -> dict[str, _Plan]:
    """Per-kind rates and quantity samplers; see the table in the module docstring."""
    rng = state.rng(chunk, _STREAM_TRAITS)
    n_p, n_o = len(people.band), len(orgs.district)
    band, decile = people.band, people.decile
    zeros_o = np.zeros(n_o)

    def persons(rate: FloatArray | float) -> FloatArray:
        return np.concatenate([np.broadcast_to(np.asarray(rate, dtype=np.float64), n_p), zeros_o])

    def both(person_rate: float, org_rate: float) -> FloatArray:
        return np.concatenate([np.full(n_p, person_rate), np.full(n_o, org_rate)])

    def orgs_only(rate: float) -> FloatArray:
        return np.concatenate([np.zeros(n_p), np.full(n_o, rate)])

    def lognormal(
        medians: FloatArray, sigma: float, step: float, low: float
    ) -> Callable[[np.random.Generator, IntArray], FloatArray]:
        def draw(g: np.random.Generator, subject: IntArray) -> FloatArray:
            x = medians[subject] * np.exp(sigma * g.standard_normal(len(subject)))
            return np.asarray(np.maximum(np.round(x / step) * step, low), dtype=np.float64)

        return draw

    def medians(person: FloatArray | float, org: float) -> FloatArray:
        return np.concatenate(
            [np.broadcast_to(np.asarray(person, dtype=np.float64), n_p), np.full(n_o, org)]
        )

    driver = rng.random(n_p) < np.array([0.40, 0.65, 0.55, 0.30])[band]
    speed_rate = np.where(driver, rng.gamma(1.0, 0.8, n_p), 0.0)
    habitual = rng.random(n_p) < np.array([0, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1])[decile] / 100
    activity = rng.random(n_p)
    active_share = np.array([0.04, 0.02, 0.025, 0.05])[band]
    very_active = activity < active_share
    occasional = ~very_active & (activity < active_share + 0.15)
    donor = rng.random(n_p)
    regular_share = np.array([0.03, 0.03, 0.02, 0.005])[band]
    regular_donor = donor < regular_share
    occasional_donor = ~regular_donor & (donor < regular_share + np.where(band == 3, 0.01, 0.05))

    def speeding_percent(g: np.random.Generator, subject: IntArray) -> FloatArray:
        u = g.random(len(subject))
        low = np.where(u < 0.80, 5, np.where(u < 0.97, 20, 50))
        high = np.where(u < 0.80, 20, np.where(u < 0.97, 50, 101))
        return g.integers(low, high).astype(np.float64)

    return {
        "transport.speeding": _Plan(persons(speed_rate), speeding_percent),
        "transport.drunk_driving": _Plan(persons(np.where(driver, 0.001, 0.0))),
        "transport.fare_evasion": _Plan(persons(np.where(habitual, 4.0, 0.003))),
        "tourism.uncivil_conduct": _Plan(persons(0.002)),
        "court.judgment_default": _Plan(
            both(0.005, 0.01), lognormal(medians(60_000, 400_000), 1.0, 0.01, 100)
        ),
        "tax.late_filing": _Plan(both(0.015, 0.06)),
        "tax.evasion_decision": _Plan(
            both(0.0001, 0.003), lognormal(medians(200_000, 2_000_000), 0.9, 0.01, 1_000)
        ),
        "market.false_advertising": _Plan(orgs_only(0.015)),
        "market.contract_breach": _Plan(both(0.002, 0.02)),
        "market.serious_violation": _Plan(orgs_only(0.002)),
        "civic.volunteer_hours": _Plan(
            persons(np.where(very_active, 12.0, np.where(occasional, 1.5, 0.0))),
            lognormal(medians(np.where(very_active, 6.0, 3.0), 0), 0.5, 0.5, 0.5),
        ),
        "civic.heroic_act": _Plan(persons(0.0002)),
        "civic.charitable_donation": _Plan(
            np.concatenate([0.02 + 0.012 * decile, np.full(n_o, 0.10)]),
            lognormal(medians(100.0 * (1 + decile / 4), 5_000), 0.9, 1, 1),
        ),
        "civic.blood_donation": _Plan(
            persons(np.where(regular_donor, 2.5, np.where(occasional_donor, 0.4, 0.0)))
        ),
    }


# --- records ---------------------------------------------------------------------------------


@dataclass
class _Events:
    """Records of one department and chunk before they become strings."""

    subject: IntArray
    kind: IntArray  # index into the department's kinds
    second: IntArray  # local time, seconds since 1970-01-01T00:00
    quantity: FloatArray  # NaN when absent
    reference: pa.Array  # string, null when absent
    retracts: IntArray  # row of the retracted record, -1 when none
    pinned: BoolArray  # other rows point at this one: never corrupt it

    @classmethod
    def concat(cls, parts: list[_Events]) -> _Events:
        """Rows of all parts, in order.

        ``retracts`` are kept as they are: only rows of the first part are ever retracted, so
        they already index the concatenation.
        """
        return cls(
            subject=np.concatenate([p.subject for p in parts]),
            kind=np.concatenate([p.kind for p in parts]),
            second=np.concatenate([p.second for p in parts]),
            quantity=np.concatenate([p.quantity for p in parts]),
            reference=pa.concat_arrays([p.reference for p in parts]),
            retracts=np.concatenate([p.retracts for p in parts]),
            pinned=np.concatenate([p.pinned for p in parts]),
        )

    def take(self, rows: IntArray) -> _Events:
        return _Events(
            subject=self.subject[rows],
            kind=self.kind[rows],
            second=self.second[rows],
            quantity=self.quantity[rows],
            reference=self.reference.take(pa.array(rows)),
            retracts=np.full(len(rows), -1, dtype=np.int64),
            pinned=np.zeros(len(rows), dtype=bool),
        )


def _department_tables(
    state: _State, chunk: int, people: _People, orgs: _Orgs, subjects: _Subjects
) -> Iterator[tuple[str, pa.Table]]:
    """Each department's rows for one chunk, one department at a time to bound memory."""
    plans = _plans(state, chunk, people, orgs)
    for department, kinds in DEPARTMENT_KINDS.items():
        parts = []
        for index, kind in enumerate(kinds):
            if kind == "court.judgment_settled":
                continue  # follows the defaults, below
            rng = state.rng(chunk, 100 + KIND_ORDER.index(kind))
            events = _draw(state, rng, kind, index, plans[kind], subjects)
            if kind == "court.judgment_default":
                settled = _settlements(state, rng, events, kinds.index("court.judgment_settled"))
                parts.extend([events, settled])
            else:
                parts.append(events)
        rng = state.rng(chunk, _STREAM_DEPARTMENT + list(DEPARTMENT_KINDS).index(department))
        events = _with_retractions(state, rng, _Events.concat(parts))
        yield department, _to_table(state, rng, department, events, subjects)


def _draw(
    state: _State,
    rng: np.random.Generator,
    kind: str,
    kind_index: int,
    plan: _Plan,
    subjects: _Subjects,
) -> _Events:
    """Poisson counts per subject over its exposure, then uniform days and hours of day."""
    exposure = np.maximum(state.stop_day - subjects.first_day, 0)
    counts = rng.poisson(plan.rate * exposure / 365.25)
    subject = np.repeat(np.arange(subjects.n, dtype=np.int64), counts)
    n = len(subject)
    day = subjects.first_day[subject] + (rng.random(n) * exposure[subject]).astype(np.int64)
    hours = OFFICE_HOURS if kind in DECISION_KINDS else WAKING_HOURS
    second = day * DAY + rng.integers(hours[0] * 3600, hours[1] * 3600, size=n)
    quantity = plan.quantity(rng, subject) if plan.quantity else np.full(n, np.nan)
    reference = pa.nulls(n, pa.string())
    if kind in REFERENCE_FORMATS:
        reference = _references(state, kind, second, subjects.region[subject])
    return _Events(
        subject=subject,
        kind=np.full(n, kind_index, dtype=np.int64),
        second=second,
        quantity=quantity,
        reference=reference,
        retracts=np.full(n, -1, dtype=np.int64),
        pinned=np.zeros(n, dtype=bool),
    )


def _references(state: _State, kind: str, second: IntArray, region: IntArray) -> pa.Array:
    head, with_district, tail = REFERENCE_FORMATS[kind]
    start = state.reference_counters[kind]
    number = np.arange(start + 1, start + len(second) + 1, dtype=np.int64)
    state.reference_counters[kind] = start + len(second)
    year = (second // DAY).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    district = _ascii(_digits(region % 10_000, 4)) if with_district else ""
    return pc.binary_join_element_wise(
        "(",
        pa.array(year).cast(pa.string()),
        ")" + head,
        district,
        tail,
        pa.array(number).cast(pa.string()),
        "",
    )


def _settlements(
    state: _State, rng: np.random.Generator, defaults: _Events, kind_index: int
) -> _Events:
    """Settle a share of judgment defaults later, naming the same judgment."""
    end = state.stop_day * DAY
    room = end - defaults.second - DAY
    chosen = np.flatnonzero((rng.random(len(room)) < SETTLED_SHARE) & (room > 0))
    settled = defaults.take(chosen)
    settled.kind[:] = kind_index
    settled.quantity[:] = np.nan
    settled.second = (
        defaults.second[chosen]
        + DAY
        + (room[chosen] * rng.beta(1, 3, len(chosen))).astype(np.int64)
    )
    defaults.pinned[chosen] = True
    return settled


def _with_retractions(state: _State, rng: np.random.Generator, events: _Events) -> _Events:
    """Append retractions of a few records, and replacements for the corrected ones."""
    end = state.stop_day * DAY
    room = end - events.second - DAY
    chosen = np.flatnonzero((rng.random(len(room)) < RETRACTED_SHARE) & (room > 3600))
    retraction = events.take(chosen)
    retraction.second = (
        events.second[chosen]
        + DAY
        + ((room[chosen] - 3600) * rng.beta(1, 4, len(chosen))).astype(np.int64)
    )
    retraction.retracts = chosen
    events.pinned[chosen] = True
    corrected = np.flatnonzero(rng.random(len(chosen)) < CORRECTED_SHARE)
    replacement = retraction.take(corrected)
    replacement.second = replacement.second + rng.integers(0, 3600, len(corrected))
    # A correction usually fixes the amount: scale it down a little, keeping its precision.
    scale = rng.uniform(0.6, 1.0, len(corrected))
    replacement.quantity = np.maximum(np.round(replacement.quantity * scale, 1), 0.5)
    return _Events.concat([events, retraction, replacement])


def _to_table(
    state: _State, rng: np.random.Generator, department: str, events: _Events, subjects: _Subjects
) -> pa.Table:
    """Sort by time, number the records, corrupt the bad share, and render strings."""
    n = len(events.subject)
    order = np.argsort(events.second, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    second = events.second[order]
    subject = events.subject[order]
    kind = events.kind[order]
    retracts = events.retracts[order]
    retracts = np.where(retracts >= 0, position[np.maximum(retracts, 0)], -1)
    pinned = events.pinned[order]

    first = state.record_counters[department] + 1
    state.record_counters[department] += n
    record_id = _record_ids(RECORD_ID_PREFIX[department], np.arange(first, first + n))
    occurred = _timestamps(rng, second)

    # Corruption: choose rows among those nobody points at, split evenly between four faults.
    eligible = np.flatnonzero(~pinned)
    n_bad = min(round(state.bad_share * n), len(eligible))
    bad = rng.choice(eligible, size=n_bad, replace=False) if n_bad else eligible[:0]
    fault = rng.permutation(np.arange(n_bad) % 4)
    state.bad_written[department] += n_bad
    variant = rng.integers(0, 2, n_bad)  # which spelling of the fault

    # Every string column is a take from candidates: [normal values..., special values...].
    subject_pick = subject.copy()
    subject_pick[bad[fault == 0]] += subjects.n  # same ID, wrong check character
    kinds = DEPARTMENT_KINDS[department]
    prefix = kinds[0].split(".")[0]
    kind_values = pa.array(
        [*kinds, *(k[:-1] for k in kinds), f"{prefix}.teleportation", "", None], pa.string()
    )
    kind_pick = kind.copy()
    unknown = bad[fault == 1]
    kind_pick[unknown] = np.where(
        variant[fault == 1] == 0, kind[unknown] + len(kinds), 2 * len(kinds)
    )
    record_pick = np.arange(n, dtype=np.int64)
    missing = bad[fault == 2]
    field_missing = rng.integers(0, 3, len(missing))
    as_null = variant[fault == 2]  # empty string or absent altogether
    record_pick[missing[field_missing == 0]] = n + as_null[field_missing == 0]
    subject_pick[missing[field_missing == 1]] = 2 * subjects.n + as_null[field_missing == 1]
    kind_pick[missing[field_missing == 2]] = 2 * len(kinds) + 1 + as_null[field_missing == 2]
    occurred_pick = np.arange(n, dtype=np.int64)
    dates = bad[fault == 3]
    occurred_pick[dates] = n + rng.integers(0, len(BAD_DATES), len(dates))

    blanks = pa.array(["", None], pa.string())
    quantity = events.quantity[order]
    return pa.table(
        {
            "record_id": pa.concat_arrays([record_id, blanks]).take(pa.array(record_pick)),
            "subject_id": pa.concat_arrays([subjects.ids, blanks]).take(pa.array(subject_pick)),
            "kind": kind_values.take(pa.array(kind_pick)),
            "occurred_at": pa.concat_arrays([occurred, pa.array(BAD_DATES)]).take(
                pa.array(occurred_pick)
            ),
            "quantity": pa.array(quantity, mask=np.isnan(quantity), type=pa.float64()),
            "reference": events.reference.take(pa.array(order)),
            "retracts": record_id.take(pa.array(retracts, mask=retracts < 0)),
        },
        schema=RECORD_SCHEMA,
    )


def _record_ids(prefix: str, numbers: IntArray) -> pa.Array:
    width = max(9, len(str(int(numbers.max())))) if len(numbers) else 9
    head = len(prefix) + 1
    matrix = np.empty((len(numbers), head + width), dtype=np.uint8)
    matrix[:, :head] = np.frombuffer(f"{prefix}-".encode("ascii"), dtype=np.uint8)
    matrix[:, head:] = _digits(numbers, width)
    return _ascii(matrix)


def _timestamps(rng: np.random.Generator, second: IntArray) -> pa.Array:
    """ISO 8601 local times; a few date-only, a few with an explicit +08:00 offset."""
    n = len(second)
    days = (second // DAY).astype("datetime64[D]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    clock = second % DAY
    matrix = np.empty((n, 25), dtype=np.uint8)
    matrix[:] = np.frombuffer(b"0000-00-00T00:00:00+08:00", dtype=np.uint8)
    matrix[:, 0:4] = _digits(year, 4)
    matrix[:, 5:7] = _digits(month, 2)
    matrix[:, 8:10] = _digits(dom, 2)
    matrix[:, 11:13] = _digits(clock // 3600, 2)
    matrix[:, 14:16] = _digits(clock // 60 % 60, 2)
    matrix[:, 17:19] = _digits(clock % 60, 2)
    u = rng.random(n)
    length = np.where(u < DATE_ONLY_SHARE, 10, np.where(u < DATE_ONLY_SHARE + OFFSET_SHARE, 25, 19))
    return _ascii(matrix, length)


def _digits(values: IntArray, width: int) -> ByteMatrix:
    """ASCII digits of non-negative integers, zero-padded to ``width`` columns.

    >>> _digits(np.array([7, 1234]), 3).tobytes()
    b'007234'
    """
    rest = np.array(values, dtype=np.int64)
    out = np.empty((len(rest), width), dtype=np.uint8)
    # Two digits per division through a lookup table: this is the hot loop of rendering.
    end = width
    while end >= 2:
        out[:, end - 2 : end] = _PAIRS[rest % 100]
        rest //= 100
        end -= 2
    if end:
        out[:, 0] = rest % 10 + _ZERO
    return out


def _ascii(matrix: ByteMatrix, length: IntArray | None = None) -> pa.Array:
    """A string array from rows of ASCII bytes, each cut to ``length`` (default: all)."""
    n, width = matrix.shape
    if length is None:
        data = np.ascontiguousarray(matrix).reshape(-1)
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    else:
        data = matrix[np.arange(width) < length[:, None]]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(length, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


# --- writing ---------------------------------------------------------------------------------


class _JsonLinesWriter:
    """JSON Lines built set-based with Arrow string kernels; absent values omit their key."""

    def __init__(self, path: Path):
        self._file = path.open("wb")

    def write_table(self, table: pa.Table) -> None:
        # Every value we write is plain ASCII without quotes or backslashes, so no escaping.
        fields = []
        for name in RECORD_COLUMNS:
            column = table.column(name).combine_chunks()
            if name == "quantity":
                column = column.cast(pa.string())
                fields.append(pc.binary_join_element_wise(f',"{name}":', column, ""))
            else:
                fields.append(pc.binary_join_element_wise(f',"{name}":"', column, '"', ""))
        body = pc.binary_join_element_wise(
            *fields, "", null_handling="replace", null_replacement=""
        )
        # Drop the leading comma of the first present field.
        lines = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(body, 1), "}\n", "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[
            lines.offset : lines.offset + len(lines) + 1
        ]
        if len(lines):
            self._file.write(lines.buffers()[2][int(offsets[0]) : int(offsets[-1])])

    def close(self) -> None:
        self._file.close()


def _open_records(stack: ExitStack, path: Path) -> _Writer:
    suffix = path.suffix.lstrip(".")
    writer: _Writer
    if suffix == "parquet":
        writer = pq.ParquetWriter(path, RECORD_SCHEMA)
    elif suffix == "csv":
        writer = pa_csv.CSVWriter(path, RECORD_SCHEMA)
    else:
        writer = _JsonLinesWriter(path)
    stack.callback(writer.close)
    return writer
