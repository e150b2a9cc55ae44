"""Service settings, declared once with their defaults and help.

The CLI (``civiscore serve``), the README table and the service all read this one declaration;
a test fails when a setting is undocumented. Each setting can be given as an environment
variable ``CIVISCORE_<NAME>`` (upper case).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str | None = Field(
        None,
        description="operational database (keys, appeals, audit, access log); default: a SQLite "
        "file in the home. postgresql://user@host/db for PostgreSQL",
    )
    rate_limit_per_second: float = Field(
        200.0, gt=0, description="requests per second allowed per key (token bucket)"
    )
    rate_limit_burst: int = Field(400, gt=0, description="burst size of the per-key bucket")
    max_body_bytes: int = Field(
        8_000_000, gt=0, description="largest request body accepted (larger: 413)"
    )
    max_batch_records: int = Field(10_000, gt=0, description="records per submission")
    max_batch_checks: int = Field(100_000, gt=0, description="subjects per batch check")
    max_page_size: int = Field(500, gt=0, description="largest page of a listing endpoint")
    review_days: int = Field(15, gt=0, description="days a reviewer has for an appeal")
    total_days: int = Field(30, gt=0, description="days an appeal may take in all")
    refresh_seconds: int = Field(
        3600,
        gt=0,
        description="full refresh of served decisions (band benefits change as records age)",
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``CIVISCORE_*`` variables, then explicit overrides (e.g. CLI flags)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"CIVISCORE_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid settings: {problems}") from exc
