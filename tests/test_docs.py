"""Docs that tests keep honest: every command and option is in the README, every package in
the architecture page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import typer.main

from civiscore.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def _commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    return dict(getattr(group, "commands", {}))


def _flatten(commands: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Commands with their full names, sub-commands of groups such as `keys create` included."""
    out: list[tuple[str, Any]] = []
    for name, command in commands.items():
        sub = getattr(command, "commands", None)
        if sub:
            out += _flatten(dict(sub), f"{prefix}{name} ")
        else:
            out.append((f"{prefix}{name}", command))
    return out


def test_every_command_and_option_is_in_the_readme() -> None:
    commands = _commands()
    assert {"init", "synth", "ingest", "score", "check", "explain", "stats", "lint", "demo"} <= set(
        commands
    )
    missing = []
    for name, command in _flatten(commands):
        if f"  {name} " not in README and f"civiscore {name} " not in README:
            missing.append(name)
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help" and opt not in README:
                    missing.append(f"{name} {opt}")
    assert not missing, f"document these in README.md: {missing}"


def test_readme_shows_the_two_commands() -> None:
    assert "make demo" in README and "make test" in README


def test_architecture_names_every_package() -> None:
    src = ROOT / "src" / "civiscore"
    packages = [p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    missing = [p for p in packages if f"{p}/" not in ARCHITECTURE]
    assert not missing, f"docs/architecture.md does not mention: {missing}"


def test_every_service_setting_is_in_the_readme() -> None:
    from civiscore.settings import Settings

    missing = [name for name in Settings.model_fields if f"`{name}`" not in README]
    assert not missing, f"document these settings in README.md: {missing}"
