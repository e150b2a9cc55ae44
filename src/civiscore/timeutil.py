"""Time as civiscore sees it: naive Asia/Shanghai wall-clock time, always passed explicitly.

China has kept UTC+8 without daylight saving since 1991, so a fixed offset is exact for every
record the scheme can hold and needs no time-zone database. Timestamps in the store are naive
local times; anything with an offset is converted on the way in.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadMoment(ValueError):
    """A date or date-time that cannot be read."""


def now_local() -> dt.datetime:
    """The current wall-clock time in Shanghai, naive, to the microsecond."""
    return dt.datetime.now(SHANGHAI).replace(tzinfo=None)


def to_local(moment: dt.datetime) -> dt.datetime:
    """A naive Shanghai time from an aware or naive (already local) datetime."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(SHANGHAI).replace(tzinfo=None)


def parse_moment(text: str) -> dt.datetime:
    """Read an ``--at``/``--known-at`` value; a bare date means the end of that day.

    A question "as of 3 March" includes everything that happened on 3 March.

    >>> parse_moment("2025-03-03")
    datetime.datetime(2025, 3, 3, 23, 59, 59, 999999)
    >>> parse_moment("2025-03-03T10:00:00+00:00")
    datetime.datetime(2025, 3, 3, 18, 0)
    """
    value = text.strip()
    try:
        if _DATE_ONLY.match(value):
            day = dt.date.fromisoformat(value)
            return dt.datetime.combine(day, dt.time.max)
        return to_local(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise BadMoment(
            f"{text!r} is not an ISO 8601 date or date-time; write 2025-03-03 or "
            "2025-03-03T14:30:00 (Asia/Shanghai unless an offset is given)"
        ) from exc


def sql_timestamp(moment: dt.datetime) -> str:
    """A SQL TIMESTAMP literal for a naive local time."""
    return f"TIMESTAMP '{moment.isoformat(sep=' ')}'"


def iso_local(moment: dt.datetime) -> str:
    """RFC 3339 text of a local time, with its offset.

    >>> iso_local(dt.datetime(2025, 3, 3, 23, 59))
    '2025-03-03T23:59:00+08:00'
    """
    return (moment if moment.tzinfo else moment.replace(tzinfo=SHANGHAI)).isoformat()


# A naive local time that leaves as RFC 3339 with its +08:00 offset, so JSON consumers (and
# JSON Schema's date-time format) know exactly which instant is meant.
LocalDateTime = Annotated[
    dt.datetime,
    PlainSerializer(iso_local, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]
