"""Sensitivity sweeps: one rulebook field set to each of several values.

A sweep is written ``PATH=V1,V2,...``. ``PATH`` is a dotted path into the rulebook's YAML where a
list of rules, listings or bands is indexed by the item's id (or band name) in brackets::

    rules[transport.speeding.over_50].points=-10,-20,-40,-80
    listings[dishonest_judgment_debtor].duration=P6M,P1Y,P2Y,P3Y
    bands[A].min=940,960,980
    base=900,1000

Each value is read as YAML (so ``-20`` is a number and ``P1Y`` text) and the edited rulebook is
validated exactly as its file would be: a value that breaks a safeguard is refused with the
path, unless the rulebook is marked ``simulation_only``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from civiscore.rulebook.load import Purpose, RulebookProblem, validate_data
from civiscore.rulebook.model import Rulebook

_STEP = re.compile(r"^(?P<key>[a-z_]+)(?:\[(?P<item>[^\]]+)\])?$")
_ID_KEYS = {"rules": "id", "listings": "id", "bands": "band"}


class SweepError(ValueError):
    """A sweep that cannot be applied; the message says which part and how to fix it."""


@dataclass(frozen=True)
class Sweep:
    """A parsed ``PATH=V1,V2,...``."""

    path: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> Sweep:
        """Read a sweep specification.

        >>> Sweep.parse("rules[transport.speeding.over_50].points=-10,-20").values
        (-10, -20)
        """
        path, sep, values = spec.partition("=")
        texts = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not path.strip() or len(texts) < 2:
            raise SweepError(
                f"--sweep {spec!r}: write PATH=V1,V2,... with at least two values, such as "
                "rules[transport.speeding.over_50].points=-10,-20,-40"
            )
        return cls(path.strip(), tuple(yaml.safe_load(t) for t in texts), texts)

    def apply(self, data: dict[str, Any], value: Any) -> dict[str, Any]:
        """A deep copy of rulebook ``data`` with the field at :attr:`path` set to ``value``."""
        out = copy.deepcopy(data)
        steps = self.path.split(".")
        # Ids contain dots, so re-join the pieces of a bracketed step before walking.
        joined: list[str] = []
        for piece in steps:
            if joined and joined[-1].count("[") > joined[-1].count("]"):
                joined[-1] += "." + piece
            else:
                joined.append(piece)
        node: Any = out
        for n, step in enumerate(joined):
            m = _STEP.match(step)
            if m is None or not isinstance(node, dict) or m["key"] not in node:
                known = ", ".join(node) if isinstance(node, dict) else "(not a mapping)"
                raise SweepError(
                    f"--sweep {self.path}: no key {step!r} at this point; keys here: {known}"
                )
            last = n == len(joined) - 1
            if m["item"] is None:
                if last:
                    node[m["key"]] = value
                else:
                    node = node[m["key"]]
                continue
            items = node[m["key"]]
            id_key = _ID_KEYS.get(m["key"])
            found = [i for i in items if isinstance(i, dict) and str(i.get(id_key)) == m["item"]]
            if id_key is None or not found:
                ids = ", ".join(str(i.get(id_key)) for i in items if isinstance(i, dict))
                raise SweepError(
                    f"--sweep {self.path}: no {m['key']} item {m['item']!r}; known: {ids}"
                )
            if last:
                raise SweepError(f"--sweep {self.path}: name a field of {step}, such as .points")
            node = found[0]
        return out

    def variants(
        self, data: dict[str, Any], source: str, purpose: Purpose
    ) -> list[tuple[str, Rulebook, list[RulebookProblem], str]]:
        """(value text, rulebook, warnings, YAML text) for each value, each validated."""
        out = []
        for value, text in zip(self.values, self.texts, strict=True):
            edited = self.apply(data, value)
            edited["version"] = f"{edited.get('version', '')}+{self.path}={text}"
            where = f"{source} with {self.path}={text}"
            rb, warnings = validate_data(edited, where, purpose)
            out.append((text, rb, warnings, yaml.safe_dump(edited, sort_keys=False)))
        return out
