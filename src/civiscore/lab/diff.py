"""``civiscore rulebook diff OLD NEW``: what changed between two rulebooks, and what it does.

The structural diff walks both rulebooks as data: rules and listings are matched by ``id``,
bands by name, services, contexts and departments by key; every changed field is reported with
its dotted path, old value and new value. The estimated effect runs both rulebooks on the same
small synthetic city with the same seed and behaviour (:mod:`civiscore.lab.simulate`) and
compares each resident's band and blacklists at the last month-end.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from civiscore.lab.behaviour import Parameters
from civiscore.lab.simulate import Scenario, simulate
from civiscore.rulebook.model import Rulebook

_KEYED = {"rules": "id", "listings": "id", "bands": "band"}


@dataclass(frozen=True)
class Change:
    """One difference: ``kind`` is added, removed or changed; ``path`` is dotted."""

    kind: str
    path: str
    old: Any
    new: Any

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.kind, "path": self.path, "old": self.old, "new": self.new}


def structural(old: Rulebook, new: Rulebook) -> list[Change]:
    """Every added, removed and changed item and field, in document order.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> rb = load(demo_rulebook_path())
    >>> structural(rb, rb)
    []
    """
    a = _plain(old.model_dump(mode="json", exclude_defaults=False))
    b = _plain(new.model_dump(mode="json", exclude_defaults=False))
    out: list[Change] = []
    _walk(a, b, "", out)
    return out


def _plain(value: Any) -> Any:
    """Durations back to the ISO 8601 text the rulebook was written in."""
    if isinstance(value, dict):
        if set(value) == {"months", "days", "text"}:
            return value["text"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _keyed(items: list[Any], key: str) -> dict[str, Any]:
    return {str(i[key]): i for i in items if isinstance(i, dict) and key in i}


def _walk(a: Any, b: Any, path: str, out: list[Change]) -> None:
    name = path.rsplit(".", 1)[-1]
    if isinstance(a, list) and isinstance(b, list) and name in _KEYED:
        key = _KEYED[name]
        ka, kb = _keyed(a, key), _keyed(b, key)
        for k in ka:
            if k not in kb:
                out.append(Change("removed", f"{path}[{k}]", ka[k], None))
        for k in kb:
            if k not in ka:
                out.append(Change("added", f"{path}[{k}]", None, kb[k]))
            else:
                _walk(ka[k], kb[k], f"{path}[{k}]", out)
        order_a = [k for k in ka if k in kb]
        order_b = [k for k in kb if k in ka]
        if name == "bands" and order_a != order_b:
            out.append(Change("changed", f"{path} (order)", order_a, order_b))
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            sub = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(Change("removed", sub, a[k], None))
            else:
                _walk(a[k], b[k], sub, out)
        for k in b:
            if k not in a:
                out.append(Change("added", f"{path}.{k}" if path else str(k), None, b[k]))
        return
    if a != b:
        out.append(Change("changed", path, a, b))


@dataclass(frozen=True)
class Effect:
    """The two rulebooks on one synthetic city, compared resident by resident."""

    residents: int
    years: int
    seed: int
    band_moves: dict[tuple[str, str], int]
    newly_listed: dict[str, int]
    unlisted: dict[str, int]
    listed_old: dict[str, int]
    listed_new: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "residents": self.residents,
            "years": self.years,
            "seed": self.seed,
            "band_moves": [
                {"old": a, "new": b, "residents": n} for (a, b), n in self.band_moves.items()
            ],
            "newly_listed": self.newly_listed,
            "no_longer_listed": self.unlisted,
            "listed_old": self.listed_old,
            "listed_new": self.listed_new,
        }


def effect(
    old: Scenario,
    new: Scenario,
    *,
    residents: int,
    years: int,
    seed: int,
    start: dt.date,
    params: Parameters,
) -> Effect:
    """Run both rulebooks on the same city and count who moves band and list at the end."""
    if old.label == new.label:
        new = Scenario(f"{new.label} (new)", *_rest(new))
    result = simulate(
        [old, new],
        residents=residents,
        years=years,
        seed=seed,
        start=start,
        params=params,
        keep_final_state=True,
    )
    a = result.final_state[old.label].to_pylist()
    b = result.final_state[new.label].to_pylist()
    moves: Counter[tuple[str, str]] = Counter()
    newly: Counter[str] = Counter()
    gone: Counter[str] = Counter()
    count_a: Counter[str] = Counter()
    count_b: Counter[str] = Counter()
    for ra, rb_ in zip(a, b, strict=True):
        moves[(ra["band"], rb_["band"])] += 1
        la, lb = set(ra["listings"] or []), set(rb_["listings"] or [])
        count_a.update(la)
        count_b.update(lb)
        newly.update(lb - la)
        gone.update(la - lb)
    return Effect(
        residents,
        years,
        seed,
        {k: v for k, v in sorted(moves.items()) if k[0] != k[1]},
        dict(sorted(newly.items())),
        dict(sorted(gone.items())),
        dict(sorted(count_a.items())),
        dict(sorted(count_b.items())),
    )


def _rest(s: Scenario) -> tuple[Any, ...]:
    return (s.rulebook, s.source, s.sha256, s.warnings, "compare", s.sweep_value)
