"""Load a rulebook from YAML, refusing it with every problem named by file, path and fix."""

from __future__ import annotations

import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from civiscore.rulebook import safeguards
from civiscore.rulebook.model import Rulebook

DEMO_RULEBOOK = "demo.yaml"
NAIVE_RULEBOOK = "naive.yaml"

# What a rulebook is loaded for. "production" is every real use: lint, publish, the rulebook in
# force, scoring and serving. "simulation" is the policy lab only (see docs/policy-lab.md).
Purpose = Literal["production", "simulation"]

_SIMULATION_ONLY = (
    "this rulebook is marked simulation_only: true; it may be run in the policy lab "
    "(`civiscore simulate`) but never published, served or used to score real records. "
    "Remove the flag and fix every other problem listed to use it for real"
)
_NOT_MARKED = (
    "breaks a safeguard; the policy lab runs such a rulebook only when it says so itself: "
    "add simulation_only: true at the top level (it can then never be used for real)"
)


@dataclass(frozen=True)
class RulebookProblem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


class RulebookError(Exception):
    """A rulebook that may not load, with every problem found."""

    def __init__(self, problems: list[RulebookProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"rulebook refused ({len(problems)} problem(s)):\n{lines}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping.

    Plain YAML keeps the last of two equal keys, which would silently drop a rule's legal
    basis or a whole department.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} is written twice in the same mapping; keep only one",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def demo_rulebook_path() -> Path:
    """Path of the demo rulebook shipped with the package."""
    return Path(str(resources.files("civiscore.rulebook") / "data" / DEMO_RULEBOOK))


def naive_rulebook_path() -> Path:
    """Path of the naive points-total rulebook shipped for the policy lab (simulation only)."""
    return Path(str(resources.files("civiscore.rulebook") / "data" / NAIVE_RULEBOOK))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulebookError(
            [RulebookProblem(str(path), "(file)", f"cannot read the file: {exc.strerror}")]
        ) from exc


def load(path: str | Path) -> Rulebook:
    """Read, validate and safeguard-check a rulebook file for real use."""
    path = Path(path)
    return loads(_read(path), str(path))


def loads(text: str, source: str = "<rulebook>") -> Rulebook:
    """Validate rulebook YAML text for real use; ``source`` names it in error messages.

    A rulebook marked ``simulation_only`` is refused here whatever else it says.
    """
    rb, _ = _validate(parse_yaml(text, source), source, "production")
    return rb


def load_for_simulation(path: str | Path) -> tuple[Rulebook, list[RulebookProblem]]:
    """Load a rulebook for the policy lab: returns it and the safeguards it breaks.

    A rulebook marked ``simulation_only: true`` may break the policy safeguards (uncapped
    merits, sanctions without an expiry window, no band cap for grave sanctions, ...); those
    breaches are returned as warnings for the report. Shape and consistency problems, and any
    protected category, still refuse it: the lab never scores what civiscore refuses to score.
    """
    path = Path(path)
    text = _read(path)
    return loads_for_simulation(text, str(path))


def loads_for_simulation(
    text: str, source: str = "<rulebook>"
) -> tuple[Rulebook, list[RulebookProblem]]:
    """:func:`load_for_simulation` for YAML text."""
    return _validate(parse_yaml(text, source), source, "simulation")


def validate_data(
    data: Any, source: str, purpose: Purpose = "production"
) -> tuple[Rulebook, list[RulebookProblem]]:
    """Validate an already parsed rulebook mapping (the lab's sweeps edit one in memory)."""
    return _validate(data, source, purpose)


def parse_yaml(text: str, source: str = "<rulebook>") -> Any:
    """The YAML of a rulebook as plain data, a key written twice refused."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise RulebookError(
            [RulebookProblem(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from exc
    return data


def _validate(data: Any, source: str, purpose: Purpose) -> tuple[Rulebook, list[RulebookProblem]]:
    if not isinstance(data, dict):
        raise RulebookError(
            [
                RulebookProblem(
                    source,
                    "(top)",
                    "a rulebook is a YAML mapping with keys " + ", ".join(Rulebook.model_fields),
                )
            ]
        )
    try:
        rb = Rulebook.model_validate(data)
    except ValidationError as exc:
        raise RulebookError(
            [RulebookProblem(source, *_describe(err, data)) for err in exc.errors()]
        ) from exc
    problems = safeguards.check(rb)
    if purpose == "production":
        errors = [RulebookProblem(source, p, m) for p, m in problems]
        if rb.simulation_only:
            errors.insert(0, RulebookProblem(source, "simulation_only", _SIMULATION_ONLY))
        if errors:
            raise RulebookError(errors)
        return rb, []
    policy = [RulebookProblem(source, p[0], p[1]) for p in problems if _is_policy(p)]
    errors = [RulebookProblem(source, p[0], p[1]) for p in problems if not _is_policy(p)]
    if policy and not rb.simulation_only:
        errors += [RulebookProblem(source, p.path, f"{p.message}; {_NOT_MARKED}") for p in policy]
    if errors:
        raise RulebookError(errors)
    return rb, policy


def _is_policy(problem: tuple[str, str]) -> bool:
    return isinstance(problem, safeguards.PolicyProblem)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc``, to list its allowed keys."""
    current: Any = Rulebook
    for part in loc:
        model = _unwrap_model(current)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            current = model.model_fields[part].annotation
            continue
        current = _element(current)
        if current is None:
            return None
    return _unwrap_model(current)


def _unwrap_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    if typing.get_origin(tp) is typing.Annotated:
        return _unwrap_model(typing.get_args(tp)[0])
    return None


def _element(tp: Any) -> Any:
    """The element type of a list or the value type of a dict (through Optional)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            el = _element(arg)
            if el is not None:
                return el
        return None
    origin = typing.get_origin(tp)
    if origin is list:
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _describe(err: Any, data: Any) -> tuple[str, str]:
    loc = tuple(err["loc"])
    # pydantic appends the union branch or validator name to some locations; drop those.
    loc = tuple(
        p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function")))
    )
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "see docs/rulebook.md"
        return _dotted(loc), f"unknown key {loc[-1]!r}; allowed keys here: {allowed}"
    if kind == "missing":
        field = loc[-1]
        if field == "legal_basis":
            return _dotted(loc), (
                "a legal basis is required: cite the law, regulation or judicial interpretation "
                "(title, number and article) that authorises this"
            )
        return _dotted(loc), f"required key {field!r} is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    if kind not in ("value_error",) and not isinstance(got, dict | list):
        msg = f"{msg} (got {got!r})"
    return _dotted(loc), msg


def refuse_simulation_only(rb: Rulebook, where: str) -> None:
    """Refuse to use a simulation-only rulebook for real (``where`` says what was attempted)."""
    if rb.simulation_only:
        raise RulebookError(
            [
                RulebookProblem(
                    f"rulebook {rb.rulebook} version {rb.version}",
                    "simulation_only",
                    f"{where} refused: {_SIMULATION_ONLY}",
                )
            ]
        )
