"""Load a rulebook from YAML, refusing it with every problem named by file, path and fix."""

from __future__ import annotations

import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from civiscore.rulebook import safeguards
from civiscore.rulebook.model import Rulebook

DEMO_RULEBOOK = "demo.yaml"


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


def load(path: str | Path) -> Rulebook:
    """Read, validate and safeguard-check a rulebook file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulebookError(
            [RulebookProblem(str(path), "(file)", f"cannot read the file: {exc.strerror}")]
        ) from exc
    return loads(text, str(path))


def loads(text: str, source: str = "<rulebook>") -> Rulebook:
    """Validate rulebook YAML text; ``source`` names it in error messages."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise RulebookError(
            [RulebookProblem(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from exc
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
    if problems:
        raise RulebookError([RulebookProblem(source, p, m) for p, m in problems])
    return rb


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
