"""The rulebook as typed data: what a YAML rulebook may say, field by field.

Shape checks (types, required keys, no unknown keys) live here as pydantic models; the
safeguards that need the whole rulebook at once live in :mod:`civiscore.rulebook.safeguards`.
``docs/rulebook.md`` documents every field; a test keeps the two in step.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from civiscore.ids import SubjectType

_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")


class Duration(BaseModel):
    """A calendar duration written in ISO 8601 (``P2Y``, ``P12M``, ``P180D``)."""

    model_config = ConfigDict(frozen=True)

    months: int
    days: int
    text: str

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, Duration):
            return value
        if not isinstance(value, str):
            raise ValueError("write a duration as ISO 8601 text such as P2Y, P12M or P180D")
        m = _DURATION.match(value.strip())
        if not m or not any(m.groups()):
            raise ValueError(
                f"{value!r} is not an ISO 8601 duration; write years, months, weeks or days such "
                "as P2Y, P12M, P6W or P180D"
            )
        years, months, weeks, days = (int(g) if g else 0 for g in m.groups())
        return cls(months=years * 12 + months, days=weeks * 7 + days, text=value.strip())

    def add_to(self, moment: dt.datetime) -> dt.datetime:
        """``moment`` plus this duration, months first (as SQL ``+ INTERVAL`` does).

        >>> Duration.parse("P1M").add_to(dt.datetime(2024, 1, 31))
        datetime.datetime(2024, 2, 29, 0, 0)
        """
        month_index = moment.month - 1 + self.months
        year = moment.year + month_index // 12
        month = month_index % 12 + 1
        day = min(moment.day, _days_in_month(year, month))
        return moment.replace(year=year, month=month, day=day) + dt.timedelta(days=self.days)

    def __str__(self) -> str:
        return self.text


def _days_in_month(year: int, month: int) -> int:
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    return (nxt - dt.timedelta(days=1)).day


DurationField = Annotated[Duration, BeforeValidator(Duration.parse)]

_PLACEHOLDERS = {"", "tbd", "todo", "n/a", "na", "none", "null", "-", "?", "unknown", "xxx"}


def _legal_basis(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() in _PLACEHOLDERS:
        raise ValueError(
            "a legal basis is required: cite the law, regulation or judicial interpretation "
            "(title, number and article) that authorises this"
        )
    return value.strip()


LegalBasis = Annotated[str, BeforeValidator(_legal_basis)]

# A value that may change over time, OpenFisca-style: a number, or a mapping from the date a
# value takes effect to the value (null ends it).
DatedNumber = float | dict[dt.date, float | None]

_DATED_HINT = (
    "write a number such as -5, or values keyed by the date they take effect such as "
    "{2020-01-01: -5, 2022-01-01: -10} (null ends the value)"
)


def _dated_number(value: object) -> object:
    # Checked here, not by the union alone: a failed union reports one error per branch, at
    # paths such as ``points.float`` that do not exist in the YAML.
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if number(value):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{_DATED_HINT} (got {value!r})")
    for key, v in value.items():
        try:
            ok_key = not isinstance(key, dt.datetime) and (
                isinstance(key, dt.date)
                or (isinstance(key, str) and bool(dt.date.fromisoformat(key)))
            )
        except ValueError:
            ok_key = False
        if not ok_key or not (v is None or number(v)):
            raise ValueError(f"{key}: {v!r} is not a dated value; {_DATED_HINT}")
    return value


DatedNumberField = Annotated[DatedNumber, BeforeValidator(_dated_number)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reference(Strict):
    """A legal document the rulebook cites."""

    title: str
    issuer: str | None = None
    number: str | None = None
    date: dt.date | None = None
    url: str | None = None
    note: str | None = None


class Band(Strict):
    band: str = Field(pattern=r"^[A-Z][A-Z+\-]{0,3}$")
    min: float | None = None
    description: str | None = None


class Context(Strict):
    description: str | None = None


class Service(Strict):
    context: str
    kind: Literal["restriction", "benefit"] = "restriction"
    description: str | None = None


class Quantity(Strict):
    unit: str
    required: bool = False


def _both_subject_types() -> list[SubjectType]:
    return ["person", "organisation"]


class RecordKind(Strict):
    context: str
    description: str
    decision: bool = False
    reference: Literal["required", "optional", "none"] = "optional"
    quantity: Quantity | None = None
    subjects: list[SubjectType] = Field(default_factory=_both_subject_types)


class Department(Strict):
    name: str
    authority: Literal["court", "regulator", "administration", "service_provider", "civic"]
    kinds: dict[str, RecordKind]


class Condition(Strict):
    quantity_at_least: float | None = None
    quantity_below: float | None = None


class Cap(Strict):
    max_points: float = Field(gt=0)
    per: Literal["calendar_year"] = "calendar_year"

    @field_validator("max_points")
    @classmethod
    def _hundredths(cls, value: float) -> float:
        # Points are kept to the hundredth; a finer cap could not be reached exactly, and the
        # engine relies on it to total capped merits without ordering them.
        if round(value, 2) != value:
            raise ValueError(
                f"a cap is kept to the hundredth, as points are: write {round(value, 2)}"
            )
        return value


class Rule(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_.\-]*$")
    kind: str
    description: str | None = None
    when: Condition | None = None
    points: DatedNumberField | None = None
    points_per_unit: DatedNumberField | None = None
    max_points_per_record: float | None = Field(default=None, gt=0)
    severity: Literal["minor", "serious", "grave", "merit"]
    valid_for: DurationField | None = None
    cap: Cap | None = None
    legal_basis: LegalBasis
    effective_from: dt.date
    effective_until: dt.date | None = None
    illustrative: bool = False


class Restriction(Strict):
    service: str
    legal_basis: LegalBasis


class Grant(Strict):
    service: str
    legal_basis: LegalBasis


class Conduct(Strict):
    kind: str
    count: int = Field(ge=1)
    within: DurationField


class Trigger(Strict):
    decision: str | None = None
    conduct: Conduct | None = None
    band: list[str] | None = None


class EndedBy(Strict):
    kind: str
    match: Literal["reference"] = "reference"


class Listing(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    list: Literal["blacklist", "redlist"]
    trigger: Trigger
    duration: DurationField | None = None
    ended_by: EndedBy | None = None
    grave: bool = False
    restricts: builtins.list[Restriction] = Field(default_factory=builtins.list)
    grants: builtins.list[Grant] = Field(default_factory=builtins.list)
    legal_basis: LegalBasis
    remedy: str | None = None
    illustrative: bool = False


class Appeal(Strict):
    how: str
    within_days: int = Field(gt=0)
    review_days: int = Field(default=15, gt=0)


class Rulebook(Strict):
    rulebook: str
    version: str
    effective_from: dt.date
    base: float = 1000
    description: str | None = None
    references: dict[str, Reference] = Field(default_factory=dict)
    contexts: dict[str, Context]
    bands: list[Band]
    grave_sanction_band_cap: str
    appeal: Appeal
    services: dict[str, Service]
    departments: dict[str, Department]
    rules: list[Rule]
    listings: list[Listing]
    simulation_only: bool = False

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the rulebook a version, such as 2026.1")
        return v.strip()

    # Convenience lookups used by the engine and the decisions layer.
    def kind(self, name: str) -> tuple[str, RecordKind] | None:
        """The department and catalogue entry of a record kind, or None."""
        for dep_name, dep in self.departments.items():
            if name in dep.kinds:
                return dep_name, dep.kinds[name]
        return None

    def listing(self, listing_id: str) -> Listing:
        for listing in self.listings:
            if listing.id == listing_id:
                return listing
        raise KeyError(listing_id)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def band_order(self) -> list[str]:
        """Band names from best to worst."""
        return [b.band for b in self.bands]
