"""The policy lab's behaviour model: who does what, how often, month by month.

A synthetic population of adult residents carries attributes the rules never see (district, age
band, income decile, urban or rural hukou). Each resident has a yearly rate per record kind that
depends on those attributes and on a few latent traits (driver, habitual fare evader, active
volunteer, regular blood donor), drawn once. Each simulated month, records are drawn from those
rates, with two feedbacks on the rulebook's own decisions at the previous month-end:

* a resident on any blacklist settles each open court judgment at ``settle_listed`` per month
  (``settle_unlisted`` otherwise), which ends a listing that a settlement ends;
* a resident on any blacklist commits negative conduct at ``listed_conduct_multiplier`` times,
  and does merit-earning acts at ``listed_merit_multiplier`` times, their usual rate.

Every number is an assumption, stated here, in :data:`ASSUMPTIONS` (which the report prints) and
in ``docs/policy-lab.md``. The rates follow :mod:`civiscore.synth.city` for residents, except
judgment defaults, which fall with income (ability to pay is the assumption).

Determinism and common random numbers: every draw comes from a generator seeded by
``(seed, stream, month, kind)``. Candidates are drawn at the highest rate any resident could
have that month, then thinned by each resident's own multiplier with uniforms from the same
stream, so two rulebooks simulated on the same seed see the same candidate events and differ
only where their decisions differ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from civiscore.synth.city import AGE_BANDS, DISTRICTS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DAY: Final = 86_400
# Hours of the day in which decisions are taken (office) and conduct happens (waking).
OFFICE: Final = (9, 17)
WAKING: Final = (6, 23)

DEFAULT_KIND: Final = "court.judgment_default"
SETTLED_KIND: Final = "court.judgment_settled"

# Department and whether each kind is a decision (timed in office hours) or earns merit points
# (thinned by the merit multiplier of listed residents; every other kind by the conduct one).
KINDS: Final[dict[str, tuple[str, bool, bool]]] = {
    "transport.speeding": ("transport", False, False),
    "transport.drunk_driving": ("transport", False, False),
    "transport.fare_evasion": ("transport", False, False),
    "tourism.uncivil_conduct": ("tourism", False, False),
    DEFAULT_KIND: ("courts", True, False),
    "tax.late_filing": ("tax", True, False),
    "tax.evasion_decision": ("tax", True, False),
    "market.contract_breach": ("market", True, False),
    "civic.volunteer_hours": ("civil_affairs", False, True),
    "civic.heroic_act": ("civil_affairs", False, True),
    "civic.charitable_donation": ("civil_affairs", False, True),
    "civic.blood_donation": ("blood_service", False, True),
}
REFERENCED: Final = frozenset({DEFAULT_KIND, "tax.evasion_decision"})

# What the report prints as the behaviour model: (kind, who, rate and amount).
ASSUMPTIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "transport.speeding",
        "drivers (40/65/55/30 % of residents aged 18-29/30-44/45-59/60+), each with a personal "
        "rate ~ Gamma(1, 0.8) a year; percent over the limit: 80 % 5-19, 17 % 20-49, 3 % 50-100",
    ),
    ("transport.drunk_driving", "0.1 % of drivers a year"),
    (
        "transport.fare_evasion",
        "habitual evaders (3 % of income deciles 1-3, 2 % of 4-7, 1 % of 8-10) 4 a year; "
        "everyone else 0.3 % a year",
    ),
    ("tourism.uncivil_conduct", "0.2 % a year"),
    (
        DEFAULT_KIND,
        "0.5 % a year on average, falling with income: 1.5x in decile 1 down to 0.5x in "
        "decile 10; CNY owed lognormal, median 60,000",
    ),
    (
        SETTLED_KIND,
        "each open judgment is settled each month with probability settle_listed while its "
        "debtor is on a blacklist, settle_unlisted otherwise (feedback)",
    ),
    ("tax.late_filing", "1.5 % a year"),
    ("tax.evasion_decision", "0.01 % a year; CNY evaded lognormal, median 200,000"),
    ("market.contract_breach", "0.2 % a year"),
    (
        "civic.volunteer_hours",
        "very active volunteers (4/2/2.5/5 % by age band) 12 records a year of median 6 h; "
        "occasional ones (15 %) 1.5 a year of median 3 h",
    ),
    ("civic.heroic_act", "0.02 % a year"),
    (
        "civic.charitable_donation",
        "2 % + 1.2 % x income decile a year; CNY lognormal, median 100 x (1 + decile / 4)",
    ),
    (
        "civic.blood_donation",
        "regular donors (3/3/2/0.5 % by age band) 2.5 a year; occasional ones (5 %, 1 % if "
        "60+) 0.4 a year",
    ),
    (
        "(population)",
        "adults in Beijing's 16 districts by 2020 census weight; age bands 19/31/27/23 %; "
        "income deciles uniform; rural hukou 2 % in Dongcheng and Xicheng, 5 % in the other "
        "core districts, 25 % in the outer ones. Attributes stay fixed for the whole run; "
        "nobody moves, ages out, is born or dies",
    ),
    (
        "(records)",
        "every record is known the moment it occurs (received_at = occurred_at); no record is "
        "retracted; appeals do not withdraw records (their effect on listings is not modelled)",
    ),
)


class Parameters(BaseModel):
    """The lab's stated parameters, declared once for the CLI, the report and the docs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_years: int = Field(
        3,
        ge=0,
        le=10,
        description="years simulated (and scored monthly) before the first reported month, so "
        "that scores and listings start from a steady state rather than from an empty record",
    )
    settle_listed: float = Field(
        0.08,
        ge=0,
        le=1,
        description="probability per month that a blacklisted resident settles an open court "
        "judgment (the listing then ends)",
    )
    settle_unlisted: float = Field(
        0.02,
        ge=0,
        le=1,
        description="probability per month that a resident not on any blacklist settles an "
        "open court judgment",
    )
    listed_conduct_multiplier: float = Field(
        0.8,
        ge=0,
        le=5,
        description="rate of negative conduct (every kind that is not a merit) of a "
        "blacklisted resident, relative to their usual rate",
    )
    listed_merit_multiplier: float = Field(
        2.0,
        ge=0,
        le=5,
        description="rate of merit-earning acts (volunteering, donations, blood donation, "
        "heroic acts) of a blacklisted resident relative to their usual rate: trying to repair "
        "a score",
    )
    appeal_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of new or extended blacklist listings that the resident appeals",
    )
    minutes_per_appeal: float = Field(
        90, gt=0, description="reviewer time to decide one appeal, in minutes"
    )
    review_hours_per_100k: float = Field(
        160,
        ge=0,
        description="reviewer hours available per month for every 100,000 residents",
    )


PARAMETERS: Final = Parameters()


@dataclass(frozen=True)
class Population:
    """Residents ``0..n-1`` (their ``sid`` in the simulation) with attributes and yearly rates."""

    n: int
    district: IntArray
    age_band: IntArray
    decile: IntArray
    rural: BoolArray
    rates: dict[str, FloatArray]
    # Medians (and lognormal sigma) of each kind with an amount, per resident.
    medians: dict[str, FloatArray]
    cumulative: dict[str, FloatArray] = field(repr=False)

    def table(self) -> pa.Table:
        """The hidden attributes as a table keyed by ``sid``: the lab's own, never the store's."""
        names = pa.array([d[1] for d in DISTRICTS])
        bands = pa.array([b[0] for b in AGE_BANDS])
        return pa.table(
            {
                "sid": pa.array(np.arange(self.n, dtype=np.int64)),
                "district": names.take(pa.array(self.district)),
                "age_band": bands.take(pa.array(self.age_band)),
                "income_decile": pa.array(self.decile.astype(np.int16)),
                "hukou": pa.array(np.where(self.rural, "rural", "urban")),
            }
        )


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def population(n: int, seed: int) -> Population:
    """Draw ``n`` residents and their yearly rates; the same (n, seed) gives the same city."""
    rng = _rng(seed, 0)
    weights = np.array([d[2] for d in DISTRICTS], dtype=np.float64)
    district = rng.choice(len(DISTRICTS), size=n, p=weights / weights.sum()).astype(np.int64)
    age_band = rng.choice(len(AGE_BANDS), size=n, p=[b[3] for b in AGE_BANDS]).astype(np.int64)
    decile = rng.integers(1, 11, size=n).astype(np.int64)
    rural = rng.random(n) < np.array([d[3] for d in DISTRICTS])[district]

    traits = _rng(seed, 1)
    driver = traits.random(n) < np.array([0.40, 0.65, 0.55, 0.30])[age_band]
    speed_rate = np.where(driver, traits.gamma(1.0, 0.8, n), 0.0)
    habitual = traits.random(n) < np.array([0, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1])[decile] / 100
    activity = traits.random(n)
    active_share = np.array([0.04, 0.02, 0.025, 0.05])[age_band]
    very_active = activity < active_share
    occasional = ~very_active & (activity < active_share + 0.15)
    donor = traits.random(n)
    regular_share = np.array([0.03, 0.03, 0.02, 0.005])[age_band]
    regular = donor < regular_share
    occasional_donor = ~regular & (donor < regular_share + np.where(age_band == 3, 0.01, 0.05))

    full = np.ones(n)
    rates = {
        "transport.speeding": speed_rate,
        "transport.drunk_driving": np.where(driver, 0.001, 0.0),
        "transport.fare_evasion": np.where(habitual, 4.0, 0.003),
        "tourism.uncivil_conduct": 0.002 * full,
        # 1.5x in decile 1 falling linearly to 0.5x in decile 10: mean 1.0x.
        DEFAULT_KIND: 0.005 * (1.5 - (decile - 1) / 9),
        "tax.late_filing": 0.015 * full,
        "tax.evasion_decision": 0.0001 * full,
        "market.contract_breach": 0.002 * full,
        "civic.volunteer_hours": np.where(very_active, 12.0, np.where(occasional, 1.5, 0.0)),
        "civic.heroic_act": 0.0002 * full,
        "civic.charitable_donation": 0.02 + 0.012 * decile,
        "civic.blood_donation": np.where(regular, 2.5, np.where(occasional_donor, 0.4, 0.0)),
    }
    medians = {
        DEFAULT_KIND: 60_000.0 * full,
        "tax.evasion_decision": 200_000.0 * full,
        "civic.volunteer_hours": np.where(very_active, 6.0, 3.0),
        "civic.charitable_donation": 100.0 * (1 + decile / 4),
    }
    cumulative = {k: np.cumsum(r) for k, r in rates.items()}
    return Population(n, district, age_band, decile, rural, rates, medians, cumulative)


@dataclass
class OpenJudgments:
    """Judgment defaults not settled yet, per simulated rulebook (feedback differs)."""

    sid: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reference: list[pa.Array] = field(default_factory=list)

    def refs(self) -> pa.Array:
        if not self.reference:
            return pa.array([], pa.string())
        return pa.concat_arrays(self.reference)


def month_bounds(start: dt.date, month: int) -> tuple[dt.datetime, dt.datetime]:
    """First instant and last instant (end of its last day) of month ``month`` after ``start``."""
    index = start.year * 12 + start.month - 1 + month
    first = dt.datetime(index // 12, index % 12 + 1, 1)
    nxt = dt.datetime((index + 1) // 12, (index + 1) % 12 + 1, 1)
    return first, nxt - dt.timedelta(microseconds=1)


def _seconds(moment: dt.datetime) -> int:
    return int((moment - dt.datetime(1970, 1, 1)).total_seconds())


def _amount(
    rng: np.random.Generator, kind: str, pop: Population, who: IntArray
) -> FloatArray | None:
    if kind == "transport.speeding":
        u = rng.random(len(who))
        lowest = np.where(u < 0.80, 5, np.where(u < 0.97, 20, 50))
        highest = np.where(u < 0.80, 20, np.where(u < 0.97, 50, 101))
        return rng.integers(lowest, highest).astype(np.float64)
    if kind not in pop.medians:
        return None
    sigma, step, low = {
        DEFAULT_KIND: (1.0, 0.01, 100.0),
        "tax.evasion_decision": (0.9, 0.01, 1_000.0),
        "civic.volunteer_hours": (0.5, 0.5, 0.5),
        "civic.charitable_donation": (0.9, 1.0, 1.0),
    }[kind]
    x = pop.medians[kind][who] * np.exp(sigma * rng.standard_normal(len(who)))
    return np.asarray(np.maximum(np.round(x / step) * step, low), dtype=np.float64)


RECORD_SCHEMA: Final = pa.schema(
    [
        ("department", pa.string()),
        ("record_id", pa.string()),
        ("sid", pa.int64()),
        ("kind", pa.string()),
        ("occurred_at", pa.timestamp("s")),
        ("quantity", pa.float64()),
        ("reference", pa.string()),
    ]
)


def month_records(
    pop: Population,
    params: Parameters,
    seed: int,
    month: int,
    start: dt.date,
    listed: BoolArray,
    judgments: OpenJudgments,
) -> pa.Table:
    """The records of one month, given who was blacklisted at the previous month-end.

    ``month`` counts from the first reported month (warm-up months are negative); record IDs are
    unique within the run because they carry the month and a running number. ``judgments`` is
    updated in place: new defaults open, settled ones close.
    """
    first, last = month_bounds(start, month)
    lo, hi = _seconds(first), _seconds(last) + 1
    days = (hi - lo) // DAY
    span = (hi - lo) / DAY / 365.25
    stream = month + 1_000  # warm-up months are negative; seeds must not be
    # Settle judgments opened in earlier months first, so a settlement never predates its
    # judgment (the engine would not match it, and the debt would stay open for ever).
    parts = [_settlements(params, seed, stream, lo, days, listed, judgments, month)]
    for index, (kind, (department, decision, merit)) in enumerate(KINDS.items()):
        rng = _rng(seed, 2, stream, index)
        multiplier = params.listed_merit_multiplier if merit else params.listed_conduct_multiplier
        top = max(1.0, multiplier)
        total = float(pop.cumulative[kind][-1]) if pop.n else 0.0
        count = int(rng.poisson(total * top * span)) if total > 0 else 0
        who = np.searchsorted(pop.cumulative[kind], rng.random(count) * total, side="right")
        who = np.minimum(who, max(pop.n - 1, 0)).astype(np.int64)
        keep = rng.random(count) * top < np.where(listed[who], multiplier, 1.0)
        hours = OFFICE if decision else WAKING
        second = (
            lo
            + rng.integers(0, days, count) * DAY
            + rng.integers(hours[0] * 3600, hours[1] * 3600, count)
        )
        amount = _amount(rng, kind, pop, who)
        who, second = who[keep], second[keep]
        if amount is not None:
            amount = amount[keep]
        ids = _ids(f"{department[:3].upper()}-M{month}-{index:02d}-", len(who))
        reference = ids if kind in REFERENCED else pa.nulls(len(who), pa.string())
        if kind == DEFAULT_KIND:
            judgments.sid = np.concatenate([judgments.sid, who])
            judgments.reference.append(ids)
        parts.append(_columns(department, ids, who, kind, second, amount, reference))
    return pa.Table.from_batches(
        [pa.RecordBatch.from_pydict(p, schema=RECORD_SCHEMA) for p in parts], RECORD_SCHEMA
    )


def _settlements(
    params: Parameters,
    seed: int,
    stream: int,
    lo: int,
    days: int,
    listed: BoolArray,
    judgments: OpenJudgments,
    month: int,
) -> dict[str, pa.Array]:
    rng = _rng(seed, 3, stream)
    n = len(judgments.sid)
    p = np.where(listed[judgments.sid], params.settle_listed, params.settle_unlisted)
    settle = rng.random(n) < p
    refs = judgments.refs()
    who = judgments.sid[settle]
    chosen = refs.filter(pa.array(settle))
    second = (
        lo + rng.integers(0, days, len(who)) * DAY + rng.integers(9 * 3600, 17 * 3600, len(who))
    )
    judgments.sid = judgments.sid[~settle]
    judgments.reference = [refs.filter(pa.array(~settle))]
    ids = _ids(f"COU-M{month}-S-", len(who))
    return _columns("courts", ids, who, SETTLED_KIND, second, None, chosen)


def _ids(prefix: str, n: int) -> pa.Array:
    numbers = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


def _columns(
    department: str,
    ids: pa.Array,
    who: IntArray,
    kind: str,
    second: IntArray,
    amount: FloatArray | None,
    reference: pa.Array,
) -> dict[str, pa.Array]:
    n = len(who)
    return {
        "department": pa.array([department] * n, pa.string()),
        "record_id": ids,
        "sid": pa.array(who, pa.int64()),
        "kind": pa.array([kind] * n, pa.string()),
        "occurred_at": pa.array(second.astype("datetime64[s]")),
        "quantity": pa.nulls(n, pa.float64()) if amount is None else pa.array(amount),
        "reference": reference,
    }
